// Package vm is the QEMU backend: a NixOS guest booted straight from the
// closure's kernel and initrd and supervised by this process. It renders
// the launch core's typed plan into QEMU's command line (the project and
// the user's directories as 9p or virtiofs shares the guest's fstab
// declares), relays the guest's consoles, and stops and describes running
// VMs over QMP. What crosses into the guest is the core's decision.
package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// The vm backend: a NixOS guest (templates/vm.nix) booted by QEMU straight
// from the closure's kernel and initrd, supervised by this process. Host
// directories reach the guest as 9p (or virtiofs) shares its fstab declares;
// the command, its environment and its terminal size reach it through a
// read-only metadata share; its output comes back on the serial console,
// framed by the guest agent's markers, and the status in the end marker.

var (
	// bootWatchdog: how long a KVM guest may stay silent before it is
	// declared stuck. A working KVM guest prints its first kernel line in
	// well under a second.
	bootWatchdog = 20 * time.Second
	// afterExit: how long the guest may take to power off once the command
	// has reported its status, before QEMU is told to quit.
	afterExit = 10 * time.Second
	// stopGrace: how long a graceful power-down may take before QEMU is
	// killed (`stop`, or a signal to the supervisor).
	stopGrace = 30 * time.Second
)

// Name is the backend's name.
const Name = "vm"

// Backend is the QEMU backend.
type Backend struct{}

func (Backend) Name() string { return Name }

func (Backend) Traits() launch.Traits { return launch.Traits{NetworkInClosure: true} }

// Check: nothing to check before a build; the accelerator is chosen when
// the start is planned.
func (Backend) Check(*launch.Runtime) error { return nil }

// Plan decides the guest's shares, the command's environment and QEMU's
// command line.
func (Backend) Plan(p *launch.Plan, m *manifest.Manifest, rt *launch.Runtime) error {
	vp, err := planVMRun(m, rt, p.ID)
	if err != nil {
		return err
	}
	env, err := guestEnv(m, rt, vp.Home, vp.User)
	if err != nil {
		return err
	}
	p.Env, p.Mounts, p.Detail = env, vp.Shares, vp
	p.Invocation = &launch.Invocation{Path: vp.QEMU, Args: vp.Args, Env: append(qemuEnv(), vp.Display.Env...)}
	return nil
}

// qemuEnv is QEMU's whole environment: it needs nothing from the user's,
// and the sandbox's (API key included) goes through the metadata share.
func qemuEnv() []string { return []string{"PATH=/usr/bin:/bin", "LC_ALL=C"} }

// Start boots the VM and supervises it until it powers off; the result is
// the guest command's status (an *launch.ExitStatusError when not zero).
func (Backend) Start(ctx context.Context, p *launch.Plan, rec *launch.Record) error {
	vp := p.Detail.(*vmPlan)
	if vp.Warning != "" {
		fmt.Fprintln(os.Stderr, "claude-sandbox: warning: "+vp.Warning)
	}
	sv := &vmSupervisor{plan: vp, command: p.Command, env: p.Env, rec: rec, term: openTerminal(os.Stdin, os.Stdout), stderr: os.Stderr}
	return sv.run(ctx)
}

// vmSupervisor runs one VM from start to power-off.
type vmSupervisor struct {
	plan    *vmPlan
	command []string // the guest command and its environment (the metadata share)
	env     []string
	rec     *launch.Record // registered by the launch; updated to name QEMU once it runs
	term    *terminal
	stderr  *os.File

	nonce      string
	lock       *os.File
	cmd        *exec.Cmd
	exited     chan error // QEMU's Wait result
	qemuIn     *os.File   // QEMU's stdin: the console's input
	consoleOut *os.File   // QEMU's stdout: the console's output
	bootLog    *os.File
	vfsd       *exec.Cmd
	waitQMP    func() error // waitForQMP; tests without a real QEMU replace it
}

func (sv *vmSupervisor) run(ctx context.Context) (err error) {
	p := sv.plan
	sweepRunDirs(p.StateDir)
	if err := sv.prepare(); err != nil {
		sv.cleanup()
		return err
	}
	defer sv.cleanup()
	if p.FS == launch.FSVirtiofs {
		if err := sv.startVirtiofsd(ctx); err != nil {
			return err
		}
	}
	if err := sv.startQEMU(); err != nil {
		return err
	}
	// Registered only once QEMU listens on QMP: `stop` and `ps` from other
	// processes rely on the socket being there.
	if sv.waitQMP == nil {
		sv.waitQMP = sv.waitForQMP
	}
	if err := sv.waitQMP(); err != nil {
		return err
	}
	// The entry the launcher registered: from now on it names QEMU, whose
	// life is the VM's, and its two sockets.
	rec := sv.rec
	rec.PID = sv.cmd.Process.Pid
	rec.PIDStart, _ = proc.StartTime(rec.PID)
	rec.Console, rec.QMP = filepath.Join(p.RunDir, vmConsoleSock), filepath.Join(p.RunDir, vmQMPSock)
	if err := launch.Register(p.StateDir, rec); err != nil {
		sv.kill()
		return &launch.VMStartError{Reason: "registering the VM: " + err.Error()}
	}
	defer launch.Unregister(p.StateDir, rec.ID)
	return sv.supervise(ctx)
}

// waitForQMP waits for QEMU to create its QMP socket (during its set-up,
// before the guest runs), or to fail.
func (sv *vmSupervisor) waitForQMP() error {
	sock := filepath.Join(sv.plan.RunDir, vmQMPSock)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if st, err := os.Stat(sock); err == nil && st.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case err := <-sv.exited:
			sv.exited <- err
			return nil // the supervisor reports how QEMU ended
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			sv.kill()
			return &launch.VMStartError{Reason: "QEMU did not open its QMP socket within 30s: " + lastLines(filepath.Join(sv.plan.RunDir, vmQEMULog), 1)}
		}
	}
}

// prepare creates the run directory and the metadata share.
func (sv *vmSupervisor) prepare() error {
	p := sv.plan
	for _, d := range []string{filepath.Dir(p.RunDir), p.RunDir, filepath.Join(p.RunDir, vmEmptyDir), filepath.Join(p.StateDir, launch.StateGuest)} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return &launch.VMStartError{Reason: err.Error()}
		}
	}
	lock, err := os.OpenFile(filepath.Join(p.RunDir, vmLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return &launch.VMStartError{Reason: err.Error()}
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return &launch.VMStartError{Reason: "run directory " + p.RunDir + " is in use"}
	}
	sv.lock = lock

	sv.nonce = newNonce()
	t := sv.term
	meta := &vmMeta{
		Run: map[string]string{
			"nonce": sv.nonce, "user": p.User, "uid": strconv.Itoa(p.UID), "gid": strconv.Itoa(p.GID),
			"home": p.Home, "project": p.Project, "shell": p.Shell,
			"tty": boolString(t.isTTY), "outTty": boolString(t.outTTY),
			"rows": strconv.Itoa(t.rows), "cols": strconv.Itoa(t.cols),
			"fs": p.FS, "vfsTag": p.VFSTag,
		},
		Argv:  sv.command,
		Env:   sv.env,
		Files: map[string][]byte{},
	}
	for source, ok := range p.Present {
		meta.Run["has-"+source] = boolString(ok)
	}
	for name, host := range map[string]string{"claude.json": ".claude.json", "gitconfig": ".gitconfig"} {
		data, ok, err := copyIfPresent(filepath.Join(p.HostHome, host))
		if err != nil {
			return &launch.VMStartError{Reason: err.Error()}
		}
		if ok {
			meta.Files[name] = data
		}
	}
	if err := meta.write(filepath.Join(p.RunDir, vmMetaDir)); err != nil {
		return &launch.VMStartError{Reason: "writing the metadata share: " + err.Error()}
	}
	return nil
}

func (sv *vmSupervisor) startVirtiofsd(ctx context.Context) error {
	p := sv.plan
	cmd := exec.Command(p.Virtiofs, "--socket-path="+vmVirtiofsd, "-o", "source="+p.Project, "-o", "cache=auto")
	cmd.Dir = p.RunDir
	cmd.Env = qemuEnv()
	log, err := os.OpenFile(filepath.Join(p.RunDir, "virtiofsd.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return &launch.VMStartError{Reason: err.Error()}
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return launch.NewVMStartError("starting virtiofsd: "+err.Error(), "use --fs 9p")
	}
	sv.vfsd = cmd
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	sock := filepath.Join(p.RunDir, vmVirtiofsd)
	deadline := time.After(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		select {
		case err := <-done:
			msg := strings.TrimSpace(lastLines(filepath.Join(p.RunDir, "virtiofsd.log"), 1))
			if msg == "" && err != nil {
				msg = err.Error()
			}
			return launch.NewVMStartError("virtiofsd failed: "+msg, "virtiofsd usually needs root; use --fs 9p")
		case <-deadline:
			return launch.NewVMStartError("virtiofsd did not create its socket within 10s", "use --fs 9p")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (sv *vmSupervisor) startQEMU() error {
	p := sv.plan
	inR, inW, err := os.Pipe()
	if err != nil {
		return err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return err
	}
	qlog, err := os.OpenFile(filepath.Join(p.RunDir, vmQEMULog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return &launch.VMStartError{Reason: err.Error()}
	}
	defer qlog.Close()
	sv.bootLog, err = os.OpenFile(filepath.Join(p.RunDir, vmBootLog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return &launch.VMStartError{Reason: err.Error()}
	}
	cmd := &exec.Cmd{Path: p.QEMU, Args: p.Args, Env: append(qemuEnv(), p.Display.Env...), Dir: p.RunDir, Stdin: inR, Stdout: outW, Stderr: qlog}
	// Its own process group: a Ctrl-C on a terminal that is not in raw mode
	// reaches only this supervisor, which then powers the guest down
	// cleanly; and QEMU dies with its supervisor rather than lingering
	// without a console.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return &launch.VMStartError{Reason: "starting " + p.QEMU + ": " + err.Error()}
	}
	sv.cmd, sv.qemuIn = cmd, inW
	sv.exited = make(chan error, 1)
	go func() { sv.exited <- cmd.Wait() }()
	sv.consoleOut = outR
	return nil
}

// cleanup removes everything of this run from the host: sockets, metadata
// (the API key) and logs. A failed boot's log is kept beside the run
// directories for the error's hint.
func (sv *vmSupervisor) cleanup() {
	if sv.cmd != nil && sv.cmd.ProcessState == nil {
		sv.kill()
	}
	if sv.vfsd != nil && sv.vfsd.Process != nil {
		_ = sv.vfsd.Process.Kill()
	}
	if sv.qemuIn != nil {
		sv.qemuIn.Close()
	}
	if sv.bootLog != nil {
		sv.bootLog.Close()
	}
	if sv.plan.RunDir != "" {
		_ = os.RemoveAll(sv.plan.RunDir)
	}
	if sv.lock != nil {
		sv.lock.Close()
	}
}

// kill ends QEMU at once and waits for it.
func (sv *vmSupervisor) kill() {
	if sv.cmd == nil || sv.cmd.Process == nil {
		return
	}
	_ = sv.cmd.Process.Kill()
	if sv.exited != nil {
		select {
		case err := <-sv.exited:
			sv.exited <- err // keep it for whoever reads next
		case <-time.After(5 * time.Second):
		}
	}
}

// powerdown asks the guest to shut down over QMP and waits up to grace for
// QEMU to exit; then quits QEMU, then kills it.
func (sv *vmSupervisor) powerdown(grace time.Duration) {
	qmpPath := filepath.Join(sv.plan.RunDir, vmQMPSock)
	ctx := context.Background()
	if c, err := dialQMP(ctx, qmpPath); err == nil {
		_ = c.Powerdown(ctx)
		c.Close()
		select {
		case err := <-sv.exited:
			sv.exited <- err
			return
		case <-time.After(grace):
		}
	}
	sv.quit()
}

// quit tells QEMU to exit now (no guest shutdown), killing it if QMP fails.
func (sv *vmSupervisor) quit() {
	ctx := context.Background()
	if c, err := dialQMP(ctx, filepath.Join(sv.plan.RunDir, vmQMPSock)); err == nil {
		_ = c.Quit(ctx)
		c.Close()
		select {
		case err := <-sv.exited:
			sv.exited <- err
			return
		case <-time.After(3 * time.Second):
		}
	}
	sv.kill()
}

// lastLines returns up to n last non-empty lines of a (small) log file.
func lastLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	var out []string
	for i := len(lines) - 1; i >= 0 && len(out) < n; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			out = append([]string{l}, out...)
		}
	}
	return strings.Join(out, "\n")
}

// sweepRunDirs removes run directories of VMs that are gone: a supervisor
// holds its run directory's lock for its whole life, and the kernel drops
// it when the process dies however it dies, so a directory whose lock can
// be taken (and that no live record names) is a leftover — its sockets
// must not make the next launch trip.
func sweepRunDirs(stateDir string) {
	live := map[string]bool{}
	if recs, err := launch.Running(stateDir); err == nil {
		for _, r := range recs {
			live[r.ID] = true
		}
	}
	root := filepath.Join(stateDir, launch.StateVM)
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || live[e.Name()] {
			continue
		}
		dir := filepath.Join(root, e.Name())
		f, err := os.OpenFile(filepath.Join(dir, vmLock), os.O_RDWR, 0)
		if err != nil {
			// No lock yet: maybe a run being set up this instant. Old ones go.
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Minute {
				_ = os.RemoveAll(dir)
			}
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			_ = os.RemoveAll(dir)
		}
		f.Close()
	}
}

// vmRunDir is the run directory of a recorded VM.
func vmRunDir(rec *launch.Record) (string, error) {
	if rec.Console == "" {
		return "", errors.New("no console socket recorded for this VM")
	}
	return filepath.Dir(rec.Console), nil
}

// Stop presses the VM's power button over QMP, then quits QEMU, then
// ends the process (through a pidfd: a recycled pid is never signalled).
func (Backend) Stop(ctx context.Context, rec *launch.Record) error {
	qemu, err := rec.Open()
	if errors.Is(err, proc.ErrExited) {
		return nil
	}
	if err != nil {
		return err
	}
	defer qemu.Close()
	if c, err := dialQMP(ctx, rec.QMP); err == nil {
		err := c.Powerdown(ctx)
		c.Close()
		if err == nil && qemu.Wait(ctx, stopGrace) {
			return nil
		}
		if c, err := dialQMP(ctx, rec.QMP); err == nil {
			_ = c.Quit(ctx)
			c.Close()
			if qemu.Wait(ctx, 3*time.Second) {
				return nil
			}
		}
	}
	// No answer on QMP: end the process itself.
	_ = qemu.Signal(unix.SIGTERM)
	if qemu.Wait(ctx, 3*time.Second) {
		return nil
	}
	_ = qemu.Signal(unix.SIGKILL)
	if !qemu.Wait(ctx, 3*time.Second) {
		return fmt.Errorf("QEMU (pid %d) did not exit", rec.PID)
	}
	return nil
}

// Status is QEMU's run state and accelerator, asked over QMP.
func (Backend) Status(ctx context.Context, rec *launch.Record) string {
	st, err := status(ctx, rec)
	if err != nil {
		return "no answer on QMP"
	}
	return st
}

// vmStatusLine writes a transient status line on a terminal.
func vmStatusLine(w io.Writer, isTTY bool, msg string) {
	if !isTTY {
		return
	}
	if msg == "" {
		fmt.Fprint(w, "\r\x1b[K")
		return
	}
	fmt.Fprint(w, "\r\x1b[K"+msg)
}
