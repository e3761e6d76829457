// Package vmhost is the supervisor's side of a VM sandbox: it runs QEMU as
// the launcher planned it, keeps the guest's boot log and watchdog, speaks
// to the guest agent over its virtio-serial port (yamux), relays sessions
// between launchers and the agent, hands the agent's proxy and SSH agent
// streams to the supervisor's services, and powers the guest down.
//
// It decides nothing about the guest's contents or QEMU's command line
// (the launcher's plan) nor about what the services allow.
package vmhost

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/claude-sandbox/claude-sandbox/internal/execstream"
	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/internal/sockpath"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/agent"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// File names in the run directory, shared with the launcher's plan.
const (
	QMPSocket   = "qmp.sock"
	AgentSocket = "agent.sock"
	Virtiofsd   = "virtiofsd.sock"
	BootLog     = "boot.log"
	QEMULog     = "qemu.log"
)

var (
	// bootWatchdog: how long a KVM guest may stay silent before it is
	// declared stuck. A working KVM guest prints its first kernel line in
	// well under a second.
	bootWatchdog = 20 * time.Second
	// readyWait bounds a boot, up to the agent's first word (a guest under
	// emulation on a loaded machine can take a minute).
	readyWait = 5 * time.Minute
	// maxBootLog bounds the console log kept on disk.
	maxBootLog int64 = 4 << 20
)

// kernelProgress recognises a kernel log line ("[    0.123456] …"): proof
// that the guest kernel runs, which a spinning nested-KVM guest never gives.
var kernelProgress = lazyregexp.New(`\[\s*\d+\.\d\d\d\d\d\d\]`)

// VM is one running guest.
type VM struct {
	spec    control.VMSpec
	log     sessionlog.Logger
	started time.Time

	cmd     *exec.Cmd
	vfsd    *exec.Cmd
	exited  chan struct{} // QEMU has exited (waitErr set)
	waitErr error
	lock    *os.File

	mu       sync.Mutex
	mux      *yamux.Session
	ready    chan struct{} // closed when the agent said it is ready, or the boot failed
	fault    *control.Fault
	progress bool // the kernel printed something

	proxy    *StreamListener
	sshAgent *StreamListener
}

// Start boots the guest. It returns once QEMU runs; the boot goes on.
// log gets the VM's steps (QEMU started, the guest agent ready, how long
// each took).
func Start(ctx context.Context, spec control.VMSpec, log sessionlog.Logger) (*VM, error) {
	v := &VM{
		spec:     spec,
		log:      log,
		started:  time.Now(),
		exited:   make(chan struct{}),
		ready:    make(chan struct{}),
		proxy:    NewStreamListener("proxy"),
		sshAgent: NewStreamListener("ssh-agent"),
	}
	if err := v.prepareStore(ctx); err != nil {
		return nil, err
	}
	if len(spec.Virtiofsd) > 0 {
		if err := v.startVirtiofsd(ctx); err != nil {
			v.release()
			return nil, err
		}
	}
	if err := v.startQEMU(); err != nil {
		v.release()
		return nil, err
	}
	v.note("qemu", "QEMU started")
	go v.connectAgent()
	return v, nil
}

// note records a step of the VM's life in the session log.
func (v *VM) note(op, what string) {
	if v.log != nil {
		v.log.Log(sessionlog.Entry{Service: "vm", Decision: sessionlog.Note, Op: op,
			Reason: fmt.Sprintf("%s after %.2fs", what, time.Since(v.started).Seconds())})
	}
}

// ProxyListener yields the guest's connections to the egress proxy.
func (v *VM) ProxyListener() net.Listener { return v.proxy }

// SSHAgentListener yields the guest's connections to the SSH agent.
func (v *VM) SSHAgentListener() net.Listener { return v.sshAgent }

func (v *VM) path(name string) string { return filepath.Join(v.spec.RunDir, name) }

func (v *VM) startVirtiofsd(ctx context.Context) error {
	a := v.spec.Virtiofsd
	cmd := exec.Command(a[0], a[1:]...)
	cmd.Dir = v.spec.RunDir
	cmd.Env = v.spec.Env
	log, err := os.OpenFile(v.path("virtiofsd.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return startFault(err.Error())
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return startFault("starting virtiofsd: " + err.Error() + " (use --fs 9p)")
	}
	v.vfsd = cmd
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(10 * time.Second)
	for {
		if _, err := os.Stat(v.path(Virtiofsd)); err == nil {
			return nil
		}
		select {
		case err := <-done:
			msg := strings.TrimSpace(lastLines(v.path("virtiofsd.log"), 1))
			if msg == "" && err != nil {
				msg = err.Error()
			}
			return startFault("virtiofsd failed: " + msg + " (virtiofsd usually needs root; use --fs 9p)")
		case <-deadline:
			return startFault("virtiofsd did not create its socket within 10s (use --fs 9p)")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (v *VM) startQEMU() error {
	a := v.spec.QEMU
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	qlog, err := os.OpenFile(v.path(QEMULog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		outR.Close()
		outW.Close()
		return startFault(err.Error())
	}
	defer qlog.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	cmd := &exec.Cmd{Path: a[0], Args: a, Env: v.spec.Env, Dir: v.spec.RunDir, Stdin: devnull, Stdout: outW, Stderr: qlog}
	// QEMU dies with its supervisor: a guest without anyone to serve its
	// doors is of no use, and would hold the store disk.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	outW.Close()
	if err != nil {
		outR.Close()
		return startFault("starting " + a[0] + ": " + err.Error())
	}
	v.cmd = cmd
	consoleRead := make(chan struct{})
	go func() {
		v.console(outR)
		close(consoleRead)
	}()
	go func() {
		v.waitErr = cmd.Wait()
		// What QEMU printed last is what a boot fault quotes: let the
		// console reach the end of its output first (boundedly: a child
		// of QEMU's could hold the pipe open).
		select {
		case <-consoleRead:
		case <-time.After(2 * time.Second):
		}
		close(v.exited)
		v.bootEnded()
	}()
	if v.spec.Accel == "kvm" {
		go v.watchdog()
	}
	return nil
}

// console keeps the serial console's output (the boot log) and notes the
// kernel's first line.
func (v *VM) console(r *os.File) {
	defer r.Close()
	log, err := os.OpenFile(v.path(BootLog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		_, _ = io.Copy(io.Discard, r)
		return
	}
	defer log.Close()
	var window []byte
	var written int64
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if written < maxBootLog {
				m, _ := log.Write(buf[:n])
				written += int64(m)
			}
			v.mu.Lock()
			if !v.progress {
				window = append(window, buf[:n]...)
				if kernelProgress.Match(window) {
					v.progress = true
				}
				if len(window) > 64 {
					window = append(window[:0], window[len(window)-64:]...)
				}
			}
			v.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

func (v *VM) watchdog() {
	select {
	case <-time.After(bootWatchdog):
	case <-v.exited:
		return
	}
	v.mu.Lock()
	stuck := !v.progress
	v.mu.Unlock()
	if stuck {
		v.setFault(&control.Fault{Kind: control.FaultNoKVM, Reason: fmt.Sprintf("the guest made no progress in %s under KVM", bootWatchdog), Auto: v.spec.AutoKVM, Log: v.keepBootLog()})
		v.kill()
	}
}

// connectAgent connects to the agent's port (QEMU listens on it) and
// serves the streams the agent opens.
func (v *VM) connectAgent() {
	conn, err := v.dialAgent()
	if err != nil {
		select {
		case <-v.exited:
			return // how QEMU ended says why (bootEnded)
		default:
		}
		v.setFault(&startFault("connecting to the guest agent's port: " + err.Error()).Fault)
		v.kill()
		return
	}
	mux, err := yamux.Client(conn, agent.MuxConfig())
	if err != nil {
		conn.Close()
		v.setFault(&startFault(err.Error()).Fault)
		v.kill()
		return
	}
	v.mu.Lock()
	v.mux = mux
	v.mu.Unlock()
	go func() {
		select {
		case <-time.After(readyWait):
			v.setFault(&startFault(fmt.Sprintf("the guest agent did not answer within %s", readyWait)).Fault)
			v.kill()
		case <-v.ready:
		}
	}()
	for {
		st, err := mux.Accept()
		if err != nil {
			return
		}
		go v.serveStream(st)
	}
}

func (v *VM) dialAgent() (net.Conn, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		addr, dir, err := sockpath.Short(v.path(AgentSocket))
		if err == nil {
			c, err := net.DialTimeout("unix", addr, 5*time.Second)
			dir.Close()
			if err == nil {
				return c, nil
			}
		}
		select {
		case <-v.exited:
			return nil, errors.New("QEMU exited")
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, errors.New("QEMU did not open it within 30s")
		}
	}
}

// serveStream takes a stream the agent opened: its first line says what it is.
func (v *VM) serveStream(st net.Conn) {
	kind, err := readKind(st)
	if err != nil {
		st.Close()
		return
	}
	switch kind {
	case agent.StreamReady:
		var r agent.Ready
		err := json.NewDecoder(bufio.NewReader(io.LimitReader(st, 64<<10))).Decode(&r)
		st.Close()
		switch {
		case err != nil:
			v.setFault(&startFault("the guest agent: " + err.Error()).Fault)
		case !r.OK:
			v.setFault(&startFault("the guest could not be set up: " + r.Error).Fault)
		default:
			v.note("ready", "the guest agent is ready")
			v.setFault(nil)
		}
	case agent.StreamProxy:
		if !v.proxy.Push(halfCloser{st}) {
			st.Close()
		}
	case agent.StreamSSHAgent:
		if !v.sshAgent.Push(halfCloser{st}) {
			st.Close()
		}
	default:
		st.Close()
	}
}

// readKind reads the kind line byte by byte: what follows is the stream's.
func readKind(r io.Reader) (string, error) {
	var b [1]byte
	var line []byte
	for len(line) < 64 {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
	return "", errors.New("a stream kind too long")
}

// halfCloser gives a yamux stream the CloseWrite the proxy uses to pass a
// direction's end on: yamux's Close is a half-close.
type halfCloser struct{ net.Conn }

func (h halfCloser) CloseWrite() error { return h.Conn.Close() }

// setFault ends the wait for the agent, with f the reason it failed (nil: ready).
func (v *VM) setFault(f *control.Fault) {
	v.mu.Lock()
	defer v.mu.Unlock()
	select {
	case <-v.ready:
		return
	default:
	}
	v.fault = f
	close(v.ready)
}

// bootEnded: QEMU exited; a wait for the agent ends with the reason.
func (v *VM) bootEnded() {
	v.setFault(v.exitFault())
}

// exitFault turns how QEMU ended before the agent's word into the reason.
func (v *VM) exitFault() *control.Fault {
	kept := v.keepBootLog()
	qemuSays := lastLines(v.path(QEMULog), 2)
	if v.spec.Accel == "kvm" {
		low := strings.ToLower(qemuSays)
		if strings.Contains(low, "kvm") || strings.Contains(low, "msr") {
			return &control.Fault{Kind: control.FaultNoKVM, Reason: "QEMU: " + firstLine(qemuSays), Auto: v.spec.AutoKVM, Log: kept}
		}
	}
	if sig := proc.SignalOf(v.waitErr); sig != 0 {
		return &control.Fault{Kind: control.FaultStart, Reason: fmt.Sprintf("QEMU was killed (signal %d) while the guest booted", sig), Log: kept}
	}
	if qemuSays != "" {
		return &control.Fault{Kind: control.FaultStart, Reason: "QEMU: " + strings.ReplaceAll(qemuSays, "\n", "; "), Log: kept}
	}
	reason := "the guest stopped before its agent started"
	if last := lastLines(kept, 1); last != "" {
		reason += " (last console line: " + strings.Map(printable, last) + ")"
	}
	return &control.Fault{Kind: control.FaultStart, Reason: reason, Log: kept}
}

func startFault(reason string) *FaultError {
	return &FaultError{control.Fault{Kind: control.FaultStart, Reason: reason}}
}

// FaultError is a start failure as an error.
type FaultError struct{ Fault control.Fault }

func (e *FaultError) Error() string { return e.Fault.Reason }

// keepBootLog copies the boot log out of the run directory (removed at the
// end) so the error can point at it; returns its path or "".
func (v *VM) keepBootLog() string {
	if v.spec.KeepBootLog == "" {
		return ""
	}
	data, err := os.ReadFile(v.path(BootLog))
	if err != nil {
		return ""
	}
	if err := os.WriteFile(v.spec.KeepBootLog, data, 0o600); err != nil {
		return ""
	}
	return v.spec.KeepBootLog
}

// Wait waits until the guest's agent is ready, or says why it never will be.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.fault != nil {
		return &FaultError{*v.fault}
	}
	select {
	case <-v.exited:
		return &FaultError{control.Fault{Kind: control.FaultStart, Reason: "the VM has powered off"}}
	default:
	}
	return nil
}

// Fault says why the guest never became ready: nil while it boots and
// once it was ready. QEMU's end is seen a moment before its reason is
// known (the boot log is kept first): a guest whose QEMU has exited is
// given that moment.
func (v *VM) Fault() *control.Fault {
	select {
	case <-v.exited:
		select {
		case <-v.ready:
		case <-time.After(2 * time.Second):
		}
	default:
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	select {
	case <-v.ready:
		return v.fault
	default:
		return nil
	}
}

// Ready: a VM is not joined by namespace; sessions go through Exec.
func (v *VM) Ready(context.Context) (int, uint64, error) {
	return 0, 0, errors.New("a VM's sessions run through its supervisor (exec)")
}

// Done is closed when QEMU has exited.
func (v *VM) Done() <-chan struct{} { return v.exited }

// Exec serves one session on a launcher's control connection: once the
// guest is ready it replies OK and relays the session's frames between the
// launcher and a new stream to the agent. It returns true when the
// launcher ended its frames (execstream.KindEnd, sent once the exit status
// came): control messages follow on c, its leave first, so a session of a
// VM leaves as every other session does (launch.Session.Close).
func (v *VM) Exec(ctx context.Context, c *control.Conn) (leaving bool) {
	if err := v.Wait(ctx); err != nil {
		r := control.Reply{Reason: err.Error(), Ending: true}
		var fe *FaultError
		if errors.As(err, &fe) {
			f := fe.Fault
			r.Fault = &f
		}
		_ = c.Send(r)
		return false
	}
	v.mu.Lock()
	mux := v.mux
	v.mu.Unlock()
	st, err := mux.Open()
	if err != nil {
		_ = c.Send(control.Reply{Reason: "opening a session in the guest: " + err.Error(), Ending: true})
		return false
	}
	defer st.Close()
	if err := c.Send(control.Reply{OK: true}); err != nil {
		return false
	}
	v.note("session", "a session started")
	s := c.Stream()
	toLauncher := execstream.NewWriter(s)
	// Frames are read, not copied as bytes, on both sides: the launcher's
	// end of frames must not reach the agent, and what the launcher sends
	// after it is no longer the session's.
	ended := make(chan bool, 1)
	go func() {
		from, to := execstream.NewReader(s), execstream.NewWriter(st)
		for {
			f, err := from.Next()
			if err != nil || f.Kind == execstream.KindEnd {
				_ = st.Close() // the agent hangs up a session whose launcher went
				ended <- err == nil
				return
			}
			// An agent gone is told by the output side; the launcher's
			// frames are read on until its end.
			_ = to.Write(f.Kind, f.Data)
		}
	}()
	finished := make(chan bool, 1)
	go func() {
		from := execstream.NewReader(st)
		for {
			f, err := from.Next()
			if err != nil || toLauncher.Write(f.Kind, f.Data) != nil {
				finished <- false
				return
			}
			if f.Kind == execstream.KindExit || f.Kind == execstream.KindError {
				finished <- true
				return
			}
		}
	}()
	var done bool
	select {
	case done = <-finished:
	case leaving = <-ended:
		// The launcher went before its command's end: nothing waits for
		// the output any more.
		return leaving
	case <-v.exited:
		// The stream dies with the guest; its last frames may still be
		// on their way.
		select {
		case done = <-finished:
		case <-time.After(2 * time.Second):
		}
	}
	// The session is over in the guest: input still on its way there (a
	// command that never read it) must not hold the launcher's frames
	// back, its end of frames included.
	_ = st.Close()
	if !done {
		// The guest ended first: the launcher says so and leaves.
		_ = toLauncher.End()
	}
	return <-ended
}

// Stop powers the guest down: the power button and up to grace for the
// guest to power off, then QEMU is told to quit, then killed. Graceful or
// not (the last session ended: nothing is left to ask), the guest powers
// off by itself first: its Nix store disk is only whole after a clean
// power-off.
func (v *VM) Stop(ctx context.Context, _ bool, grace time.Duration) error {
	defer v.release()
	select {
	case <-v.exited:
		return nil
	default:
	}
	if c, err := dialQMP(ctx, v.path(QMPSocket)); err == nil {
		_ = c.Powerdown(ctx)
		c.Close()
		select {
		case <-v.exited:
			return nil
		case <-time.After(grace):
		}
		if c, err := dialQMP(ctx, v.path(QMPSocket)); err == nil {
			_ = c.Quit(ctx)
			c.Close()
			select {
			case <-v.exited:
				return nil
			case <-time.After(3 * time.Second):
			}
		}
	}
	v.kill()
	return nil
}

// kill ends QEMU at once and waits for it.
func (v *VM) kill() {
	if v.cmd == nil || v.cmd.Process == nil {
		return
	}
	_ = v.cmd.Process.Kill()
	select {
	case <-v.exited:
	case <-time.After(5 * time.Second):
	}
}

// release lets go of what the VM held once it is gone.
func (v *VM) release() {
	if v.vfsd != nil && v.vfsd.Process != nil {
		_ = v.vfsd.Process.Kill()
	}
	v.proxy.Close()
	v.sshAgent.Close()
	if v.lock != nil {
		v.lock.Close()
		v.lock = nil
	}
}

// Status is the guest's run state and accelerator, asked over QMP, and
// the size of its Nix store.
func (v *VM) Status(ctx context.Context) string {
	state := "no answer on QMP"
	if c, err := dialQMP(ctx, v.path(QMPSocket)); err == nil {
		if st, kvm, err := c.Status(ctx); err == nil {
			accel := "tcg"
			if kvm {
				accel = "kvm"
			}
			state = st + ", " + accel
		}
		c.Close()
	}
	if n, err := StoreSize(v.spec.Store); err == nil {
		state += ", Nix store " + HumanSize(n)
	}
	return state
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

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func printable(r rune) rune {
	if r < 0x20 || r == 0x7f {
		return -1
	}
	return r
}
