package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// enterContainer runs a shell (or rt.Command) in a running container: nsenter
// into the namespaces of its init, then this binary's --join side (already
// in the container, at ContainerInitPath) takes the payload's user and
// groups and runs the command in the project. The environment is the
// payload's own, read from /proc/PID/environ, with this terminal's TERM.
// On a terminal, the command gets a pty of its own: the host terminal is
// never the controlling terminal of anything inside.
func enterContainer(ctx context.Context, rec *Record, rt *Runtime) error {
	if rt.euid() != 0 {
		return &NotRootError{Backend: "container"}
	}
	// A container that has just been started may not run its command yet.
	var init, payload int
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if init, payload, err = containerProcesses(rec); err != nil && !errors.Is(err, errNoContainerProcess) {
			return err
		}
		if payload != 0 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the container of %s runs no command (starting or stopping)", rec.Project)
		}
	}
	env, err := containerEnviron(payload)
	if err != nil {
		return fmt.Errorf("reading the container's environment: %w", err)
	}
	if term, ok := rt.lookupEnv("TERM"); ok && term != "" {
		env = containerSetEnv(env, "TERM", term)
	}
	uid, gid, groups, err := containerCredentials(payload)
	if err != nil {
		return fmt.Errorf("reading the container user: %w", err)
	}
	nsenter, err := findNsenter(rec)
	if err != nil {
		return err
	}
	cwd := rt.Project
	if cwd == "" {
		cwd = rec.Project
	}
	command := rt.Command
	if len(command) == 0 {
		command = []string{"/bin/bash", "-l"}
	}
	terminal := fdIsTerminal(0) && fdIsTerminal(1)
	spec := initSpec{UID: uid, GID: gid, Groups: groups, Cwd: cwd, TTY: terminal, Join: true, Command: command}
	args := []string{"nsenter", "--target=" + strconv.Itoa(init)}
	for _, ns := range []struct{ name, flag string }{
		{"mnt", "--mount"}, {"uts", "--uts"}, {"ipc", "--ipc"}, {"net", "--net"}, {"pid", "--pid"}, {"cgroup", "--cgroup"},
	} {
		theirs, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", init, ns.name))
		ours, err2 := os.Readlink("/proc/self/ns/" + ns.name)
		if err1 == nil && err2 == nil && theirs != ours {
			args = append(args, ns.flag)
		}
	}
	args = append(args, "--")
	args = append(args, spec.args()...)
	inv := &Invocation{Path: nsenter, Args: args, Env: env}
	if !terminal {
		return &StartError{Err: Exec(inv)}
	}
	return runContainerOnPTY(ctx, inv, fmt.Sprintf("/proc/%d/root/dev", init))
}

// findNsenter takes util-linux's nsenter from the closure when the record
// names it, else the host's.
func findNsenter(rec *Record) (string, error) {
	if rec.Closure != "" {
		if m, err := manifest.Load(rec.Closure); err == nil && m.Container != nil {
			return m.Container.Nsenter, nil
		}
	}
	for _, dir := range nspawnDirs {
		p := filepath.Join(dir, "nsenter")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("nsenter"); err == nil {
		return p, nil
	}
	return "", &ContainerHostError{Reason: "nsenter is not installed", Fix: "install util-linux"}
}

const maxContainerEnviron = 1 << 20

func containerEnviron(pid int) ([]string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxContainerEnviron))
	if err != nil {
		return nil, err
	}
	var env []string
	for _, kv := range strings.Split(string(data), "\x00") {
		if strings.Contains(kv, "=") {
			env = append(env, kv)
		}
	}
	return env, nil
}

func containerSetEnv(env []string, name, value string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return append(out, name+"="+value)
}

// containerCredentials reads the real uid, gid and groups of a process.
func containerCredentials(pid int) (uid, gid int, groups []containerGroup, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, nil, err
	}
	uid, gid = -1, -1
	for _, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value)
		switch key {
		case "Uid":
			if len(fields) > 0 {
				uid, _ = strconv.Atoi(fields[0])
			}
		case "Gid":
			if len(fields) > 0 {
				gid, _ = strconv.Atoi(fields[0])
			}
		case "Groups":
			for _, f := range fields {
				if g, err := strconv.Atoi(f); err == nil {
					groups = append(groups, containerGroup{GID: g, Name: "g" + f})
				}
			}
		}
	}
	if uid < 0 || gid < 0 {
		return 0, 0, nil, errors.New("no Uid/Gid in /proc status")
	}
	return uid, gid, groups, nil
}

// runContainerOnPTY runs inv with a new pty as its terminal and this terminal, in
// raw mode, copied to and from it; window size changes follow. The pty is
// the container's own (from its /dev/pts, reached through the init's root),
// so that ttyname(3) finds it inside.
func runContainerOnPTY(ctx context.Context, inv *Invocation, dev string) error {
	master, slave, err := openContainerPTY(dev)
	if err != nil {
		if master, slave, err = openContainerPTY("/dev"); err != nil {
			return &StartError{Err: err}
		}
	}
	defer master.Close()
	resize := func() {
		if ws, err := unix.IoctlGetWinsize(0, unix.TIOCGWINSZ); err == nil {
			_ = unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, ws)
		}
	}
	resize()
	cmd := &exec.Cmd{Path: inv.Path, Args: inv.Args, Env: inv.Env, Stdin: slave, Stdout: slave, Stderr: slave}
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		slave.Close()
		return &StartError{Err: err}
	}
	slave.Close()

	if old, err := unix.IoctlGetTermios(0, unix.TCGETS); err == nil {
		raw := *old
		raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		raw.Oflag &^= unix.OPOST
		raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		raw.Cflag &^= unix.CSIZE | unix.PARENB
		raw.Cflag |= unix.CS8
		raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
		_ = unix.IoctlSetTermios(0, unix.TCSETS, &raw)
		defer unix.IoctlSetTermios(0, unix.TCSETS, old)
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
	var ee *exec.ExitError
	switch {
	case werr == nil:
		return nil
	case errors.As(werr, &ee):
		if ws, ok := ee.Sys().(unix.WaitStatus); ok {
			return &ExitStatusError{Code: containerExitCode(ws)}
		}
		return &ExitStatusError{Code: ee.ExitCode()}
	}
	return werr
}

func openContainerPTY(dev string) (master, slave *os.File, err error) {
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
