package launch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// Joining and stopping a running bubblewrap sandbox.
//
// The registry records bwrap's own pid (the process that exec'd bwrap,
// registered before the exec). bwrap forks the sandbox's init (pid 1 in its
// pid namespace), which forks the sandboxed program, the payload:
// registered pid → init → payload, each found through
// /proc/PID/task/PID/children. A join enters the payload's namespaces and
// takes its environment from /proc/PAYLOAD/environ, so a joined shell sees
// what the first program saw.

// NotRunningError: no sandbox runs for the project.
type NotRunningError struct{ Project string }

func (e *NotRunningError) Error() string {
	return fmt.Sprintf("no sandbox is running for %s", e.Project)
}
func (e *NotRunningError) Hint() string {
	return "start one with `claude-sandbox PROJECT`; `claude-sandbox ps` lists the running ones"
}

// EndedBeforeJoin says whether a join failed only because the sandbox
// ended before the command could enter it: a new one may be started.
func EndedBeforeJoin(err error) bool {
	var nr *NotRunningError
	var ee *EnterError
	switch {
	case errors.As(err, &nr):
		return true
	case errors.As(err, &ee) && ee.Step == stepNameFork:
		// The kernel refuses new members of a pid namespace whose init
		// has exited with ENOMEM.
		return errors.Is(ee.Err, unix.ENOMEM)
	case errors.As(err, &ee) && ee.Step != stepNameExec:
		return errors.Is(ee.Err, os.ErrNotExist) || errors.Is(ee.Err, unix.ESRCH)
	}
	return false
}

// payloadEnding tells "the command is not installed" from "the sandbox
// ended while we joined": a payload on its way out has already dropped its
// root directory, so every lookup inside fails with ENOENT too. If it is gone
// (or a zombie) within a moment, the sandbox ended.
func payloadEnding(err error, payload int) bool {
	var ee *EnterError
	if !errors.As(err, &ee) || ee.Step != stepNameExec || !errors.Is(ee.Err, os.ErrNotExist) {
		return false
	}
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", payload))
		if err != nil {
			return true
		}
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			return true
		}
	}
	return false
}

// children reads the direct children of a process.
func bwrapChildren(pid int) []int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return bwrapChildrenByScan(pid)
	}
	var out []int
	for _, f := range strings.Fields(string(data)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// bwrapChildrenByScan is children for kernels without CONFIG_PROC_CHILDREN.
func bwrapChildrenByScan(parent int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(data, ')')
		fields := strings.Fields(string(data[i+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(parent) {
			out = append(out, pid)
		}
	}
	return out
}

// bwrapPayload finds the sandboxed program of a running bubblewrap
// sandbox, waiting (up to the context's deadline, or 10 s) for a sandbox
// registered a moment ago to get that far.
func bwrapPayload(ctx context.Context, rec *Record) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		if !rec.Alive() {
			return 0, &NotRunningError{Project: rec.Project}
		}
		for _, init := range bwrapChildren(rec.PID) {
			if kids := bwrapChildren(init); len(kids) > 0 {
				return kids[0], nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, &EnterError{Step: "finding its processes", Err: errors.New("the sandbox did not start its program in time")}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// bwrapPayloadEnv reads the payload's environment. A payload found a moment
// after bwrap forked it may not have exec'd yet: until then it is still
// bwrap, which is not dumpable, and its environ reads as "permission
// denied". That passes within milliseconds; anything else is final.
func bwrapPayloadEnv(ctx context.Context, rec *Record, pid int) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		env, err := bwrapProcessEnv(pid)
		if !errors.Is(err, os.ErrPermission) || !rec.Alive() {
			return env, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// bwrapProcessEnv reads a process's initial environment.
func bwrapProcessEnv(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return nil, err
	}
	var env []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if len(kv) > 0 {
			env = append(env, string(kv))
		}
	}
	return env, nil
}

func bwrapEnvValue(env []string, name string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

// bwrapJoinCommand is what a join runs when rt names no command: Claude Code or
// a login shell, from the running sandbox's closure.
func bwrapJoinCommand(rec *Record, rt *Runtime) []string {
	if len(rt.Command) > 0 {
		return rt.Command
	}
	if m, err := manifest.Load(rec.Closure); err == nil {
		if rt.Shell {
			return []string{m.Shell, "-l"}
		}
		return []string{m.Claude}
	}
	if rt.Shell {
		return []string{"bash", "-l"}
	}
	return []string{"claude"}
}

// enterBubblewrap runs a command (default: a login shell, or Claude Code
// for a second launch) inside a running sandbox and returns its exit status
// as an *ExitStatusError when it is not zero.
func enterBubblewrap(ctx context.Context, rec *Record, rt *Runtime) error {
	payload, err := bwrapPayload(ctx, rec)
	if err != nil {
		return err
	}
	env, err := bwrapPayloadEnv(ctx, rec, payload)
	if err != nil {
		return &EnterError{Step: "reading its environment", Err: err}
	}
	cwd := rt.Project
	if cwd == "" {
		cwd = rec.Project
	}
	// This terminal's own type, not the first launcher's.
	over := map[string]string{"PWD": cwd}
	for _, name := range []string{"TERM", "COLORTERM"} {
		if v, ok := rt.lookupEnv(name); ok && v != "" {
			over[name] = v
		}
	}
	env = mergeEnv(env, over)
	argv := bwrapJoinCommand(rec, rt)

	// Signals: Ctrl-C and Ctrl-\ reach the command from the terminal
	// directly; what is sent to this process alone is passed on.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	e, err := startInNamespaces(payload, argv, env, bwrapEnvValue(env, "PATH"), cwd, bwrapEnvValue(env, "HOME"), TerminalFilter())
	if err != nil {
		if payloadEnding(err, payload) {
			return &NotRunningError{Project: rec.Project}
		}
		return err
	}
	if e.cwdIdx > 0 {
		fmt.Fprintf(os.Stderr, "claude-sandbox: %s is not visible in that sandbox; starting in %s\n", cwd, map[int]string{1: "$HOME", 2: "/"}[e.cwdIdx])
	}
	done := make(chan unix.WaitStatus, 1)
	go func() {
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(e.pid, &ws, 0, nil)
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
				_ = unix.Kill(e.pid, sig.(syscall.Signal))
			}
		case ws := <-done:
			if ws.Signaled() && ws.Signal() == unix.SIGKILL && bwrapEnding(ctx, rec) {
				// Everything in a sandbox ends with its first program.
				fmt.Fprintf(os.Stderr, "claude-sandbox: the sandbox this joined has ended (the program of the launch that started it exited)\n")
			}
			switch {
			case ws.Exited() && ws.ExitStatus() == 0:
				return nil
			case ws.Exited():
				return &ExitStatusError{Code: ws.ExitStatus()}
			case ws.Signaled():
				return &ExitStatusError{Code: 128 + int(ws.Signal())}
			}
			return &ExitStatusError{Code: 1}
		}
	}
}

// stopBubblewrap ends a sandbox: SIGHUP and SIGTERM to its program (a
// terminal closing, then a polite request: an interactive shell ignores
// SIGTERM), then, after a grace period, SIGKILL to its init, which takes
// every process of the pid namespace with it.
func stopBubblewrap(ctx context.Context, rec *Record) error {
	pidfd, err := unix.PidfdOpen(rec.PID, 0)
	if err != nil || !rec.Alive() {
		if err == nil {
			unix.Close(pidfd)
		}
		return nil // already gone
	}
	defer unix.Close(pidfd)
	inits := bwrapChildren(rec.PID)
	for _, init := range inits {
		for _, p := range bwrapChildren(init) {
			_ = unix.Kill(p, unix.SIGHUP)
			_ = unix.Kill(p, unix.SIGTERM)
		}
	}
	if bwrapExited(ctx, pidfd, 5*time.Second) {
		return nil
	}
	for _, init := range inits {
		_ = unix.Kill(init, unix.SIGKILL)
	}
	// bwrap itself: its child gone, it exits; if not, it goes too.
	if bwrapExited(ctx, pidfd, 2*time.Second) {
		return nil
	}
	_ = unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
	if bwrapExited(ctx, pidfd, 2*time.Second) {
		return nil
	}
	return fmt.Errorf("the sandbox (pid %d) did not end", rec.PID)
}

// exited waits for a process (by pidfd, so a recycled pid cannot fool it).
// bwrapEnding tells a joined command killed because its sandbox ended from
// one killed by someone else. The pid namespace's init dies first and
// takes the command with it; bwrap, its parent, exits a moment later.
func bwrapEnding(ctx context.Context, rec *Record) bool {
	pidfd, err := unix.PidfdOpen(rec.PID, 0)
	if err != nil || !rec.Alive() { // the start time tells a reused pid
		if err == nil {
			unix.Close(pidfd)
		}
		return !rec.Alive()
	}
	defer unix.Close(pidfd)
	return bwrapExited(ctx, pidfd, time.Second)
}

func bwrapExited(ctx context.Context, pidfd int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		ms := int(time.Until(deadline) / time.Millisecond)
		if ms < 0 {
			ms = 0
		}
		if ms > 100 {
			ms = 100 // look at the context now and then
		}
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, _ := unix.Poll(fds, ms)
		if n > 0 {
			return true
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
	}
}
