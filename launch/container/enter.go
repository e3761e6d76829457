package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/internal/tty"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// Enter runs argv in a running container as one of its sessions: nsenter
// into the namespaces of its init, then this binary's --join side (already
// in the container, at InitPath) takes the container user's identity (the
// one the init was started for) and runs the command in the project. The
// environment is the launch's for the first session, else the container's
// own (its init's), with this terminal's TERM. On a terminal, the command
// gets a pty of its own: the host terminal is never the controlling
// terminal of anything inside. The command is this process's child, never
// its replacement: this process holds the session's registration.
func (Backend) Enter(ctx context.Context, s *launch.Session, rt *launch.Runtime, argv []string) error {
	if rt.EffectiveUID() != 0 {
		return &launch.NotRootError{Backend: Name}
	}
	if err := s.Ready(ctx); err != nil {
		return err
	}
	rec := s.Record
	init := s.Target
	if init == 0 {
		var err error
		if init, _, err = containerProcesses(rec); err != nil {
			if errors.Is(err, errNoContainerProcess) {
				return &launch.NotRunningError{Project: rec.Project}
			}
			return err
		}
	}
	spec, err := initSpecOf(init)
	if err != nil {
		return &launch.EnterError{Step: "reading the container's user", Err: err, Ended: errors.Is(err, os.ErrNotExist)}
	}
	env := s.Env
	if env == nil {
		if env, err = proc.Environ(init); err != nil {
			return &launch.EnterError{Step: "reading the container's environment", Err: err, Ended: errors.Is(err, os.ErrNotExist)}
		}
		env = containerPayloadEnv(env)
	}
	if term, ok := rt.Getenv("TERM"); ok && term != "" {
		env = launch.MergeEnv(env, map[string]string{"TERM": term})
	}
	nsenter, err := findNsenter(rec)
	if err != nil {
		return err
	}
	cwd := rt.Project
	if cwd == "" {
		cwd = rec.Project
	}
	terminal := tty.IsTerminal(0) && tty.IsTerminal(1)
	join := initSpec{UID: spec.UID, GID: spec.GID, Groups: spec.Groups, Cwd: cwd, TTY: terminal, Join: true, Command: argv}
	args := []string{"nsenter", "--target=" + strconv.Itoa(init)}
	for _, ns := range []struct{ name, flag string }{
		{"mnt", "--mount"}, {"uts", "--uts"}, {"ipc", "--ipc"}, {"net", "--net"}, {"pid", "--pid"}, {"cgroup", "--cgroup"},
	} {
		if same, err := proc.SharesNamespace(init, ns.name); err == nil && !same {
			args = append(args, ns.flag)
		}
	}
	args = append(args, "--")
	args = append(args, join.args()...)
	inv := &launch.Invocation{Path: nsenter, Args: args, Env: env}
	if !terminal {
		return runAttached(ctx, inv)
	}
	return runOnPTY(ctx, inv, fmt.Sprintf("/proc/%d/root/dev", init))
}

// initSpecOf reads the container user's identity from its init's command line.
func initSpecOf(init int) (initSpec, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", init))
	if err != nil {
		return initSpec{}, err
	}
	args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	if len(args) < 2 || args[0] != InitPath {
		return initSpec{}, fmt.Errorf("process %d is not the container's init", init)
	}
	return parseInitSpec(args[1:])
}

// runAttached runs inv on this process's standard input and output and
// returns its status; SIGTERM and SIGHUP sent to this process are passed on.
func runAttached(ctx context.Context, inv *launch.Invocation) error {
	cmd := &exec.Cmd{Path: inv.Path, Args: inv.Args, Env: inv.Env, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGHUP)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return &launch.StartError{Err: err}
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			_ = cmd.Process.Signal(sig)
		case <-ctx.Done():
			_ = cmd.Process.Signal(unix.SIGTERM)
		case err := <-waited:
			if err == nil {
				return nil
			}
			if code, ok := proc.ExitCodeOf(err); ok {
				return launch.StatusError(code)
			}
			return err
		}
	}
}

// findNsenter takes util-linux's nsenter from the closure when the record
// names it, else the host's.
func findNsenter(rec *launch.Record) (string, error) {
	if rec.Closure != "" {
		if m, err := manifest.Load(rec.Closure); err == nil && m.Container != nil {
			return m.Container.Nsenter, nil
		}
	}
	if p, ok := launch.FindSystemProgram("nsenter"); ok {
		return p, nil
	}
	return "", &launch.HostError{Backend: Name, Reason: "nsenter is not installed", Fix: "install util-linux"}
}

// runOnPTY runs inv with a new pty as its terminal and this terminal, in
// raw mode, copied to and from it; window size changes follow. The pty is
// the container's own (from its /dev/pts, reached through the init's root),
// so that ttyname(3) finds it inside.
func runOnPTY(ctx context.Context, inv *launch.Invocation, dev string) error {
	master, slave, err := openPTY(dev)
	if err != nil {
		if master, slave, err = openPTY("/dev"); err != nil {
			return &launch.StartError{Err: err}
		}
	}
	defer master.Close()
	resize := func() { tty.CopySize(0, int(master.Fd())) }
	resize()
	cmd := &exec.Cmd{Path: inv.Path, Args: inv.Args, Env: inv.Env, Stdin: slave, Stdout: slave, Stderr: slave}
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		slave.Close()
		return &launch.StartError{Err: err}
	}
	slave.Close()

	if restore, err := tty.MakeRaw(0); err == nil {
		defer restore()
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, unix.SIGWINCH)
	defer signal.Stop(winch)
	go func() {
		for range winch {
			resize()
		}
	}()
	go func() { _, _ = io.Copy(master, os.Stdin) }()
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(os.Stdout, master); close(copied) }()

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-waited:
	case <-ctx.Done():
		_ = cmd.Process.Signal(unix.SIGTERM)
		werr = <-waited
	}
	// The last output is still in the pty; reading ends with EIO once it
	// is drained and no process holds the other side.
	select {
	case <-copied:
	case <-time.After(time.Second):
	}
	if werr == nil {
		return nil
	}
	if code, ok := proc.ExitCodeOf(werr); ok {
		return launch.StatusError(code)
	}
	return werr
}

func openPTY(dev string) (master, slave *os.File, err error) {
	fd, err := unix.Open(dev+"/pts/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening a pty: %w", err)
	}
	master = os.NewFile(uintptr(fd), dev+"/pts/ptmx")
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("unlocking a pty: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("naming a pty: %w", err)
	}
	sfd, err := unix.Open(dev+"/pts/"+strconv.Itoa(n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("opening a pty: %w", err)
	}
	return master, os.NewFile(uintptr(sfd), dev+"/pts/"+strconv.Itoa(n)), nil
}
