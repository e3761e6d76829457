package container

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// readyWait bounds a container's start, up to its init's "ready".
const readyWait = 2 * time.Minute

// Spawn starts the container detached (a session of its own): nspawn in a
// mount namespace of its own (NspawnWrapper), the init as its keeper, the
// lifetime pipe as the init's standard input. It returns once the init
// said "ready" on its standard output, its root set up.
func (Backend) Spawn(ctx context.Context, p *launch.Plan, lifetime *os.File) (*launch.Started, error) {
	d, _ := p.Detail.(*detail)
	if d == nil {
		return nil, errors.New("container plan without its detail")
	}
	self, err := selfExecutable()
	if err != nil {
		return nil, err
	}
	inv := p.Invocation
	logPath := filepath.Join(p.RunDir, "nspawn.log")
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer readyR.Close()
	cmd := &exec.Cmd{
		Path: self, Args: append([]string{NspawnWrapperName, inv.Path}, inv.Args...), Env: inv.Env,
		Stdin: lifetime, Stdout: readyW, Stderr: log,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		readyW.Close()
		return nil, &launch.StartError{Err: fmt.Errorf("starting systemd-nspawn: %w", err)}
	}
	readyW.Close()
	// Reaped by whoever inherits it when this launch ends.
	go func() { _ = cmd.Wait() }()
	fail := func(err error) (*launch.Started, error) {
		_ = cmd.Process.Kill()
		return nil, startFailure(logPath, err)
	}
	if err := waitReady(ctx, readyR); err != nil {
		return fail(err)
	}
	init := 0
	for _, c := range proc.Children(cmd.Process.Pid) {
		if same, err := proc.SharesNamespace(c, "pid"); err == nil && !same {
			init = c
			break
		}
	}
	if init == 0 {
		return fail(errNoContainerProcess)
	}
	start, err := proc.StartTime(init)
	if err != nil {
		return fail(err)
	}
	s := &launch.Started{
		OuterPID: cmd.Process.Pid, InitPID: init, InitStart: start,
		Ready: func(context.Context) error { return nil },
	}
	if u := d.User; os.Geteuid() == 0 && u.UID != 0 {
		// The supervisor needs root only to be handed its descriptors: it
		// serves the sandbox as the user the container runs for.
		s.RunAs = &control.RunAs{UID: u.UID, GID: u.GID, Groups: containerGIDInts(u.Groups)}
	}
	return s, nil
}

// waitReady reads the init's "ready", or end of file when nspawn or the
// init failed first.
func waitReady(ctx context.Context, r *os.File) error {
	deadline := time.Now().Add(readyWait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = r.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	line, err := bufio.NewReader(r).ReadString('\n')
	if strings.TrimSpace(line) == "ready" {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("the container did not start within %s", readyWait)
	}
	return errors.New("the container ended while starting")
}

// startFailure says why the container could not start, in nspawn's (or
// the init's) words.
func startFailure(logPath string, err error) error {
	data, _ := os.ReadFile(logPath)
	if msg := strings.TrimSpace(string(data)); msg != "" {
		lines := strings.Split(msg, "\n")
		err = fmt.Errorf("%w: %s", err, lines[len(lines)-1])
	}
	return &launch.StartError{Err: err}
}
