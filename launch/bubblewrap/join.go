package bubblewrap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/nsenter"
	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/internal/seccomp"
	"github.com/claude-sandbox/claude-sandbox/launch"
)

// Joining and stopping a running bubblewrap sandbox.
//
// The registry records bwrap's own pid (the process that exec'd bwrap,
// registered before the exec). bwrap forks the sandbox's init (pid 1 in its
// pid namespace), which forks the sandboxed program, the payload:
// registered pid → init → payload, each found through
// /proc/PID/task/*/children (proc.Children). A join enters the payload's namespaces and
// takes its environment from /proc/PAYLOAD/environ, so a joined shell sees
// what the first program saw.

// enterError turns a failure to enter into the core's EnterError, saying
// whether it failed only because the sandbox ended first.
func enterError(err error) error {
	var ne *nsenter.Error
	if !errors.As(err, &ne) {
		return err
	}
	e := &launch.EnterError{Step: ne.Step, Err: ne.Err}
	switch ne.Step {
	case nsenter.StepFork:
		// The kernel refuses new members of a pid namespace whose init
		// has exited with ENOMEM.
		e.Ended = errors.Is(ne.Err, unix.ENOMEM)
	case nsenter.StepExec:
		e.CommandMissing = errors.Is(ne.Err, unix.ENOENT)
	default:
		e.Ended = errors.Is(ne.Err, os.ErrNotExist) || errors.Is(ne.Err, unix.ESRCH)
	}
	return e
}

// payloadEnding tells "the command is not installed" from "the sandbox
// ended while we joined": a payload on its way out has already dropped its
// root directory, so every lookup inside fails with ENOENT too. If it is gone
// (or a zombie) within a moment, the sandbox ended.
func payloadEnding(err error, payload int) bool {
	var ne *nsenter.Error
	if !errors.As(err, &ne) || ne.Step != nsenter.StepExec || !errors.Is(ne.Err, os.ErrNotExist) {
		return false
	}
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if st, err := proc.ReadStat(payload); err != nil || st.Exited() {
			return true
		}
	}
	return false
}

// bwrapPayload finds the sandboxed program of a running bubblewrap
// sandbox, waiting (up to the context's deadline, or 10 s) for a sandbox
// registered a moment ago to get that far.
func bwrapPayload(ctx context.Context, rec *launch.Record) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		if !rec.Alive() {
			return 0, &launch.NotRunningError{Project: rec.Project}
		}
		for _, init := range proc.Children(rec.PID) {
			if kids := proc.Children(init); len(kids) > 0 {
				return kids[0], nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, &launch.EnterError{Step: "finding its processes", Err: errors.New("the sandbox did not start its program in time")}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Enter runs argv inside a running sandbox as one of its sessions: in the
// namespaces of its init (the session names it), with the environment the
// launch decided or, for a later session, the one the sandbox started with
// (its keeper's), and the same seccomp filter.
func (Backend) Enter(ctx context.Context, s *launch.Session, rt *launch.Runtime, argv []string) error {
	rec := s.Record
	target, env := s.Target, s.Env
	if target == 0 {
		// A sandbox started by an older claude-sandbox: its program is the
		// payload under bwrap's init.
		payload, err := bwrapPayload(ctx, rec)
		if err != nil {
			return err
		}
		target = payload
	}
	if env == nil {
		var err error
		if env, err = sandboxEnv(ctx, target); err != nil {
			return &launch.EnterError{Step: "reading its environment", Err: err, Ended: errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH)}
		}
	}
	cwd := rt.Project
	if cwd == "" {
		cwd = rec.Project
	}
	// This terminal's own type, not the first launcher's.
	over := map[string]string{"PWD": cwd}
	for _, name := range []string{"TERM", "COLORTERM"} {
		if v, ok := rt.Getenv(name); ok && v != "" {
			over[name] = v
		}
	}
	env = launch.MergeEnv(env, over)

	// Signals: Ctrl-C and Ctrl-\ reach the command from the terminal
	// directly; what is sent to this process alone is passed on.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	// A handle on the sandbox's init, taken before the command joins it:
	// when the command is killed, whether the sandbox ended too is asked
	// of that process, not of whatever has its pid by then.
	start := s.TargetStart
	if start == 0 {
		start, _ = proc.StartTime(target)
	}
	sandbox, err := proc.Open(target, start)
	if errors.Is(err, proc.ErrExited) {
		return &launch.NotRunningError{Project: rec.Project}
	}
	if err != nil {
		return &launch.EnterError{Step: "finding its processes", Err: err}
	}
	defer sandbox.Close()

	if err := s.Ready(ctx); err != nil {
		return err
	}
	port := 0
	if s.Listen != nil {
		port = s.Listen.Port
	}
	e, err := nsenter.Start(nsenter.Options{
		Target: target, Argv: argv, Env: env, Path: launch.EnvValue(env, "PATH"), ListenPort: port,
		Dirs: []string{cwd, launch.EnvValue(env, "HOME"), "/"}, Filter: seccomp.TerminalFilter(),
		// Joined by root, a session would keep root's capabilities (bwrap
		// run by root makes no user namespace): enough to unmount what
		// keeps protected paths read-only. The sandbox's own keeper has
		// none either (--cap-drop ALL).
		DropCapabilities: os.Geteuid() == 0,
	})
	if err != nil {
		if payloadEnding(err, target) {
			return &launch.NotRunningError{Project: rec.Project}
		}
		return enterError(err)
	}
	if e.Listener != nil {
		err := s.Listen.Take(e.Listener)
		e.Listener.Close()
		if err != nil {
			_ = unix.Kill(e.Pid, unix.SIGKILL)
			var ws unix.WaitStatus
			_, _ = unix.Wait4(e.Pid, &ws, 0, nil)
			return err
		}
	}
	if e.Dir > 0 {
		fmt.Fprintf(os.Stderr, "claude-sandbox: %s is not visible in that sandbox; starting in %s\n", cwd, map[int]string{1: "$HOME", 2: "/"}[e.Dir])
	}
	done := make(chan unix.WaitStatus, 1)
	go func() {
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(e.Pid, &ws, 0, nil)
			if err != unix.EINTR {
				break
			}
		}
		done <- ws
	}()
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGTERM || sig == syscall.SIGHUP {
				_ = unix.Kill(e.Pid, sig.(syscall.Signal))
			}
		case ws := <-done:
			if ws.Signaled() && ws.Signal() == unix.SIGKILL && ended(ctx, sandbox) {
				fmt.Fprintf(os.Stderr, "claude-sandbox: the sandbox this joined has ended (stopped, or its supervisor is gone)\n")
			}
			return launch.StatusError(proc.ExitCode(ws))
		}
	}
}

// sandboxEnv is the environment a sandbox started with: its keeper's (the
// init's child), which bwrap started with the launch's environment. A
// keeper found a moment after bwrap forked it may not have exec'd yet:
// until then it is still bwrap, which is not dumpable, and its environ
// reads as "permission denied".
func sandboxEnv(ctx context.Context, init int) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		var err error = os.ErrNotExist
		if kids := proc.Children(init); len(kids) > 0 {
			var env []string
			if env, err = proc.Environ(kids[0]); err == nil {
				return env, nil
			}
		}
		if !errors.Is(err, os.ErrPermission) && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ended says whether a sandbox whose member was just killed has ended. The
// kernel kills the members of a pid namespace when its init exits, a
// moment before bwrap, which waits for that init, exits itself.
func ended(ctx context.Context, sandbox *proc.Process) bool {
	return sandbox.Wait(ctx, time.Second)
}

// Stop ends a sandbox: SIGHUP and SIGTERM to its program (a terminal
// closing, then a polite request: an interactive shell ignores SIGTERM),
// then, after a grace period, SIGKILL to its init, which takes every
// process of the pid namespace with it.
func (Backend) Stop(ctx context.Context, rec *launch.Record) error {
	bwrap, err := rec.Open()
	if errors.Is(err, proc.ErrExited) {
		return nil // already gone
	}
	if err != nil {
		return err
	}
	defer bwrap.Close()
	inits := proc.Children(rec.PID)
	for _, init := range inits {
		for _, p := range proc.Children(init) {
			_ = unix.Kill(p, unix.SIGHUP)
			_ = unix.Kill(p, unix.SIGTERM)
		}
	}
	if bwrap.Wait(ctx, 5*time.Second) {
		return nil
	}
	for _, init := range inits {
		_ = unix.Kill(init, unix.SIGKILL)
	}
	// bwrap itself: its child gone, it exits; if not, it goes too.
	if bwrap.Wait(ctx, 2*time.Second) {
		return nil
	}
	_ = bwrap.Signal(unix.SIGKILL)
	if bwrap.Wait(ctx, 2*time.Second) {
		return nil
	}
	return fmt.Errorf("the sandbox (pid %d) did not end", rec.PID)
}
