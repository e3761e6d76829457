package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/execstream"
	"github.com/claude-sandbox/claude-sandbox/internal/tty"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// session is one launch's session of a VM.
type session struct {
	argv   []string // nil: a login shell (enter)
	what   string   // for the session log
	first  bool     // this launch started the VM
	accel  string   // the first session's: what the boot status says
	supLog *os.File // the first session's: what the supervisor said
	// beforeLeave runs once the command has ended, while the VM still
	// lives (learn mode asks what was reached).
	beforeLeave func(context.Context, *launch.Record)
}

// runSession runs a session of the VM rec names through its supervisor:
// the command as the sandbox user, this process's terminal (raw, window
// size followed) or pipes relayed to it, SIGINT, SIGTERM and SIGHUP passed
// on; the result is the command's status. A VM that ended before the
// session began is an EnterError with Ended set (a launch then starts one).
func runSession(ctx context.Context, rec *launch.Record, s *session) error {
	c, err := control.Dial(ctx, controlSocket(rec))
	if err != nil {
		return s.failed(&launch.EnterError{Step: "connecting to the VM's supervisor", Err: err, Ended: true})
	}
	defer c.Close()
	if err := c.Send(control.Request{Op: control.OpExec, PID: os.Getpid(), What: s.what}); err != nil {
		return s.failed(&launch.EnterError{Step: "asking the VM's supervisor", Err: err, Ended: true})
	}
	t := openTerminal(os.Stdin, os.Stdout)
	errTTY := tty.IsTerminal(int(os.Stderr.Fd()))
	if s.first {
		accel := "KVM"
		if s.accel == launch.AccelTCG {
			accel = "TCG emulation, no KVM: slow"
		}
		statusLine(os.Stderr, errTTY, "claude-sandbox: booting the VM ("+accel+")…")
	}
	var reply control.Reply
	err = c.Receive(context.Background(), &reply)
	statusLine(os.Stderr, errTTY, "")
	if err != nil {
		return s.failed(&launch.EnterError{Step: "waiting for the VM", Err: err, Ended: true})
	}
	if !reply.OK {
		return s.failed(replyError(reply))
	}
	ended, err := relay(c, t, s.request(t))
	if ended {
		if s.beforeLeave != nil {
			s.beforeLeave(ctx, rec)
		}
		// The session leaves as every session does: the last one's
		// launch returns once the VM, its record and run directory are
		// gone.
		ls := &launch.Session{Record: rec, Conn: c}
		ls.Close()
	}
	return err
}

func (s *session) request(t *terminal) execstream.Request {
	req := execstream.Request{Argv: s.argv, TTY: t.isTTY, Rows: t.rows, Cols: t.cols}
	if len(req.Argv) == 0 {
		req.Argv = []string{"/bin/sh", "-l"}
	}
	return req
}

// failed completes an error with what the supervisor said, when it ended
// before the first session could begin.
func (s *session) failed(err error) error {
	if s.supLog == nil {
		return err
	}
	var ee *launch.EnterError
	if !errors.As(err, &ee) {
		return err
	}
	// The supervisor has exited by now or is about to: give its last
	// words a moment.
	time.Sleep(100 * time.Millisecond)
	said, _ := io.ReadAll(io.NewSectionReader(s.supLog, 0, 64<<10))
	msg := strings.TrimSpace(string(said))
	if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
		msg = msg[i+1:]
	}
	msg = strings.TrimPrefix(msg, supervisorName+": ")
	if msg == "" {
		msg = ee.Error()
	}
	return &launch.VMStartError{Reason: msg}
}

// replyError turns a supervisor's refusal into the launch's error.
func replyError(r control.Reply) error {
	if f := r.Fault; f != nil {
		if f.Kind == control.FaultNoKVM {
			return &launch.NoKVMError{Reason: f.Reason, Auto: f.Auto}
		}
		return &launch.VMStartError{Reason: f.Reason, Log: f.Log}
	}
	if r.Ending {
		return &launch.EnterError{Step: "starting a session", Err: errors.New(r.Reason), Ended: true}
	}
	return &launch.EnterError{Step: "starting a session", Err: errors.New(r.Reason)}
}

// relay sends the request and carries the session both ways until its
// exit status arrives; ended says the frames were ended on both sides
// (control messages may follow on c).
func relay(c *control.Conn, t *terminal, req execstream.Request) (ended bool, err error) {
	stream := c.Stream()
	w, r := execstream.NewWriter(stream), execstream.NewReader(stream)
	if err := w.Request(req); err != nil {
		return false, fmt.Errorf("the VM's session: %w", err)
	}
	t.raw()
	defer t.restore()

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGWINCH)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case sig := <-sigs:
				if sig == unix.SIGWINCH {
					if rows, cols, ok := t.size(); ok {
						_ = w.Resize(rows, cols)
					}
					continue
				}
				_ = w.Write(execstream.KindSignal, []byte{byte(sig.(syscall.Signal))})
			case <-done:
				return
			}
		}
	}()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := t.in.Read(buf)
			if n > 0 {
				if w.Data(execstream.KindStdin, buf[:n]) != nil {
					return
				}
			}
			if err != nil {
				_ = w.Write(execstream.KindStdinEOF, nil)
				return
			}
		}
	}()
	for {
		f, err := r.Next()
		if err != nil || f.Kind == execstream.KindEnd {
			t.restore()
			fmt.Fprintln(os.Stderr, "claude-sandbox: the VM ended before the command did")
			return err == nil && w.End() == nil, &launch.ExitStatusError{Code: 128 + int(unix.SIGTERM)}
		}
		switch f.Kind {
		case execstream.KindStdout:
			_, _ = t.out.Write(f.Data)
		case execstream.KindStderr:
			_, _ = os.Stderr.Write(f.Data)
		case execstream.KindError:
			t.restore()
			fmt.Fprintln(os.Stderr, "claude-sandbox: "+string(f.Data))
			return w.End() == nil, &launch.ExitStatusError{Code: 127}
		case execstream.KindExit:
			status, _ := f.Status()
			return w.End() == nil, launch.StatusError(status)
		}
	}
}

// terminal is the host side of a session: the user's terminal (or the
// pipes standing in for it).
type terminal struct {
	in, out   *os.File
	isTTY     bool // stdin is a terminal: the command gets one too
	rows      int
	cols      int
	restoreFn func()
}

func openTerminal(in, out *os.File) *terminal {
	t := &terminal{in: in, out: out, isTTY: tty.IsTerminal(int(in.Fd()))}
	t.rows, t.cols, _ = t.size()
	return t
}

func (t *terminal) size() (rows, cols int, ok bool) {
	for _, f := range []*os.File{t.out, t.in} {
		if rows, cols, ok := tty.Size(int(f.Fd())); ok {
			return rows, cols, true
		}
	}
	return 0, 0, false
}

// raw puts the terminal in raw mode (keys, Ctrl-C included, go to the
// guest, whose own terminal handles them) until restore.
func (t *terminal) raw() {
	if !t.isTTY || t.restoreFn != nil {
		return
	}
	restore, err := tty.MakeRaw(int(t.in.Fd()))
	if err != nil {
		return
	}
	t.restoreFn = restore
}

func (t *terminal) restore() {
	if t.restoreFn != nil {
		t.restoreFn()
		t.restoreFn = nil
	}
}

// statusLine writes a transient status line on a terminal.
func statusLine(w io.Writer, isTTY bool, msg string) {
	if !isTTY {
		return
	}
	if msg == "" {
		fmt.Fprint(w, "\r\x1b[K")
		return
	}
	fmt.Fprint(w, "\r\x1b[K"+msg)
}
