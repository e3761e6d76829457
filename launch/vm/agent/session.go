package agent

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/execstream"
)

// drainAfterExit bounds how long output is still relayed once the
// command has exited: a background process that keeps its terminal or
// pipe open must not hold the session (and its status) back.
const drainAfterExit = 500 * time.Millisecond

// hangupGrace is how long a session's processes get between SIGHUP/SIGTERM
// and SIGKILL when the host side went away.
const hangupGrace = 5 * time.Second

// serveSession runs one session: its request, the command as the user,
// input and output both ways, and its exit status last.
func (a *agent) serveSession(st net.Conn) {
	defer st.Close()
	r, w := execstream.NewReader(st), execstream.NewWriter(st)
	req, err := r.ReadRequest()
	if err != nil {
		_ = w.Write(execstream.KindError, []byte(err.Error()))
		return
	}
	if a.setupErr != nil {
		_ = w.Write(execstream.KindError, []byte("the guest could not be set up: "+a.setupErr.Error()))
		return
	}
	s, err := a.start(req)
	if err != nil {
		_ = w.Write(execstream.KindError, []byte(err.Error()))
		return
	}
	_ = w.Write(execstream.KindStarted, nil)

	exited := make(chan struct{})
	hostGone := make(chan struct{})
	go func() {
		defer close(hostGone)
		s.input(r, exited)
	}()
	var outputs sync.WaitGroup
	for _, o := range s.outputs {
		outputs.Add(1)
		go func(o output) {
			defer outputs.Done()
			relay(o, w)
		}(o)
	}
	status := s.wait()
	close(exited)
	drained := make(chan struct{})
	go func() { outputs.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainAfterExit):
	}
	s.closeOutputs()
	_ = w.Exit(status)
	// The host reads the status and closes its end; a session whose host
	// vanished ends here too.
	select {
	case <-hostGone:
	case <-time.After(10 * time.Second):
	}
}

// output is one of the command's output channels.
type output struct {
	kind execstream.Kind
	f    *os.File
}

func relay(o output, w *execstream.Writer) {
	buf := make([]byte, 32<<10)
	for {
		n, err := o.f.Read(buf)
		if n > 0 {
			if w.Data(o.kind, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// session is a running command.
type session struct {
	cmd     *exec.Cmd
	pty     *os.File // the terminal's master side, for a terminal session
	stdin   *os.File // the input pipe, for a pipe session
	outputs []output
	once    sync.Once
}

func (a *agent) start(req execstream.Request) (*session, error) {
	c := a.cfg
	env := req.Env
	if env == nil {
		env = c.Env
	}
	path, err := lookPath(req.Argv[0], env)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{Path: path, Args: req.Argv, Env: env, Dir: workDir(req.Cwd, c)}
	attr := &syscall.SysProcAttr{}
	if c.UID != os.Geteuid() {
		attr.Credential = &syscall.Credential{Uid: uint32(c.UID), Gid: uint32(c.GID), Groups: []uint32{uint32(c.GID)}}
	}
	s := &session{cmd: cmd}
	if req.TTY {
		ptmx, tty, err := pty.Open()
		if err != nil {
			return nil, err
		}
		if req.Rows > 0 && req.Cols > 0 {
			_ = pty.Setsize(ptmx, &pty.Winsize{Rows: uint16(req.Rows), Cols: uint16(req.Cols)})
		}
		// The user's own terminal, as login(1) leaves it.
		_ = tty.Chown(c.UID, c.GID)
		_ = tty.Chmod(0o620)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
		cmd.SysProcAttr = attr
		err = cmd.Start()
		tty.Close()
		if err != nil {
			ptmx.Close()
			return nil, err
		}
		s.pty = ptmx
		s.outputs = []output{{execstream.KindStdout, ptmx}}
		return s, nil
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	attr.Setpgid = true
	cmd.SysProcAttr = attr
	err = cmd.Start()
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return nil, err
	}
	s.stdin = inW
	s.outputs = []output{{execstream.KindStdout, outR}, {execstream.KindStderr, errR}}
	return s, nil
}

// input applies the host's frames until the stream ends. A stream that
// ends before the command did is a hang-up: the command's process group
// is told as a closing terminal tells it, then killed.
func (s *session) input(r *execstream.Reader, exited <-chan struct{}) {
	for {
		f, err := r.Next()
		if err != nil {
			select {
			case <-exited:
			default:
				s.hangup(exited)
			}
			return
		}
		switch f.Kind {
		case execstream.KindStdin:
			if s.pty != nil {
				_, _ = s.pty.Write(f.Data)
			} else if s.stdin != nil {
				_, _ = s.stdin.Write(f.Data)
			}
		case execstream.KindStdinEOF:
			if s.pty != nil {
				_, _ = s.pty.Write([]byte{0x04}) // the terminal's end of file
			} else if s.stdin != nil {
				s.stdin.Close()
				s.stdin = nil
			}
		case execstream.KindResize:
			if rows, cols, ok := f.Size(); ok && s.pty != nil {
				_ = pty.Setsize(s.pty, &pty.Winsize{Rows: uint16(rows), Cols: uint16(cols)})
			}
		case execstream.KindSignal:
			if len(f.Data) == 1 {
				switch sig := unix.Signal(f.Data[0]); sig {
				case unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGKILL, unix.SIGWINCH:
					s.signal(sig)
				}
			}
		}
	}
}

func (s *session) signal(sig unix.Signal) {
	if p := s.cmd.Process; p != nil {
		// The command leads its own process group (setsid or setpgid).
		_ = unix.Kill(-p.Pid, sig)
	}
}

// hangup tells the command its host went away as a closing terminal
// does (SIGHUP, SIGCONT), then asks it to end (SIGTERM), then kills it.
func (s *session) hangup(exited <-chan struct{}) {
	for _, step := range []struct {
		sigs []unix.Signal
		wait time.Duration
	}{
		{[]unix.Signal{unix.SIGHUP, unix.SIGCONT}, hangupGrace / 2},
		{[]unix.Signal{unix.SIGTERM}, hangupGrace / 2},
		{[]unix.Signal{unix.SIGKILL}, 0},
	} {
		for _, sig := range step.sigs {
			s.signal(sig)
		}
		select {
		case <-exited:
			return
		case <-time.After(step.wait):
		}
	}
}

// wait returns the command's exit status, 128+n for a signal, as a shell
// reports it.
func (s *session) wait() int {
	err := s.cmd.Wait()
	if s.stdin != nil {
		s.stdin.Close()
	}
	st := s.cmd.ProcessState
	if st == nil {
		if err != nil {
			return 127
		}
		return 0
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}

func (s *session) closeOutputs() {
	s.once.Do(func() {
		for _, o := range s.outputs {
			o.f.Close()
		}
	})
}

// workDir is where a session starts: the one asked for, else the project,
// else the home, else /.
func workDir(asked string, c *Config) string {
	for _, d := range []string{asked, c.Project, c.Home} {
		if d != "" && isDir(d) {
			return d
		}
	}
	return "/"
}

// lookPath finds a command on the session's own PATH (not the agent's).
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &notFoundError{name}
}

type notFoundError struct{ name string }

func (e *notFoundError) Error() string { return e.name + ": command not found" }
