// Package control is the conversation between a launcher and the
// supervisor of a running sandbox, over the supervisor's control socket:
// a session joins (and stays registered for as long as its connection is
// open), `stop` ends the sandbox, `ps` asks for its status. It is the only
// part of the supervisor a launcher links: it must stay free of the
// services (Nix gateway, egress proxy), whose libraries would slow every
// launch's start.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/sockpath"

	"golang.org/x/sys/unix"
)

// SocketName is the control socket's name in the sandbox's run directory.
const SocketName = "control.sock"

// Ops a launcher sends.
const (
	OpJoin   = "join"   // register a session; the reply says where to join
	OpStop   = "stop"   // end the sandbox (its sessions are asked to end first)
	OpStatus = "status" // report sessions and decision counts
	// OpExec registers a session that runs through the supervisor (a VM's:
	// the sandbox is not a namespace a launcher can enter). Once the reply
	// says OK the connection carries the session's frames
	// (internal/execstream), the request first, relayed to the guest.
	OpExec = "exec"
	// OpDoor hands the supervisor a listening socket made inside the
	// sandbox (its descriptor travels with the message) for a service.
	OpDoor = "door"
	// OpLearned asks for the allow rules learn mode recorded.
	OpLearned = "learned"
	// OpLeave ends a session whose command has ended. The reply waits,
	// if it was the last session, until the sandbox is gone and its
	// registry record removed, so a finished launch leaves nothing behind.
	OpLeave = "leave"
	// OpReady, on the first session, is answered once the supervisor
	// serves: what it makes before serving (the trust files) exists.
	OpReady = "ready"
)

// Request is one line from a launcher.
type Request struct {
	Op string `json:"op"`
	// PID is the requesting launcher's pid, for the log.
	PID int `json:"pid,omitempty"`
	// What names the session for people (`exec: make test`, `enter`, `claude`).
	What string `json:"what,omitempty"`
	// Service is the service an OpDoor socket is for ("net").
	Service string `json:"service,omitempty"`
}

// Reply is the supervisor's answer to one request.
type Reply struct {
	OK bool `json:"ok"`
	// Reason says why not, for a person ("the sandbox is ending").
	Reason string `json:"reason,omitempty"`
	// Ending: the sandbox is going away; a launcher starts a new one.
	Ending bool `json:"ending,omitempty"`
	// Target is the process whose namespaces a session joins, with its
	// start time (so a recycled pid is never joined).
	Target      int     `json:"target,omitempty"`
	TargetStart uint64  `json:"targetStart,omitempty"`
	Status      *Status `json:"status,omitempty"`
	// Learned are the rules learn mode recorded (OpLearned).
	Learned []string `json:"learned,omitempty"`
	// Fault says why a sandbox could not start, for the launcher's error
	// (and exit code).
	Fault *Fault `json:"fault,omitempty"`
}

// Fault kinds.
const (
	FaultStart = "start" // the sandbox did not come up
	FaultNoKVM = "nokvm" // KVM was chosen and does not work here
)

// Fault is a start failure the launcher reports as its own error.
type Fault struct {
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
	Log    string `json:"log,omitempty"`  // a kept boot log
	Auto   bool   `json:"auto,omitempty"` // KVM was chosen by --accel auto
}

// Status is what `ps` shows of a running sandbox.
type Status struct {
	ID       string    `json:"id"`
	Sessions int       `json:"sessions"`
	Started  time.Time `json:"started"`
	// Services counts each service's decisions since the sandbox started.
	Services map[string]Counts `json:"services,omitempty"`
	// Detail is the sandbox's own state in a few words (a VM's run state,
	// accelerator and Nix store size).
	Detail string `json:"detail,omitempty"`
}

// Counts are a service's decisions.
type Counts struct {
	Allowed int `json:"allowed"`
	Refused int `json:"refused"`
}

// maxLine bounds one message: a peer that never sends a newline must not
// make the other side allocate without limit.
const maxLine = 64 << 10

// Conn is one control connection.
type Conn struct {
	c   net.Conn
	r   *bufio.Reader
	dir *os.File // keeps a /proc/self/fd socket address valid
	// posted counts requests sent by Post whose replies are still to be
	// read: the next Call reads them first.
	posted int
}

// NewConn wraps an already connected socket (the first session's end of
// the socketpair a launcher hands a new supervisor).
func NewConn(c net.Conn) *Conn { return &Conn{c: c, r: bufio.NewReaderSize(c, 4096)} }

// Dial connects to the control socket at path. Paths longer than a
// sockaddr_un holds (107 bytes: a deep home or state directory) are
// reached through /proc/self/fd.
func Dial(ctx context.Context, path string) (*Conn, error) {
	addr, dir, err := sockpath.Short(path)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		dir.Close()
		return nil, err
	}
	conn := NewConn(c)
	conn.dir = dir
	return conn, nil
}

// Close ends the connection; for a joined session, the session.
func (c *Conn) Close() error {
	if c.dir != nil {
		c.dir.Close()
	}
	return c.c.Close()
}

// File returns a duplicate of the connection's descriptor, for handing the
// session on to another process (it stays registered while any copy is open).
func (c *Conn) File() (*os.File, error) {
	uc, ok := c.c.(*net.UnixConn)
	if !ok {
		return nil, errors.New("control: not a Unix socket")
	}
	return uc.File()
}

// Stream is the connection as a byte stream once the request and reply
// are done (an exec session's frames): reads start with whatever the
// line reader already holds.
func (c *Conn) Stream() io.ReadWriter {
	return struct {
		io.Reader
		io.Writer
	}{c.r, c.c}
}

// CloseWrite ends the writing direction only (a session's input is over,
// its output still comes).
func (c *Conn) CloseWrite() error {
	if cw, ok := c.c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Send writes one message.
func (c *Conn) Send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = c.c.Write(append(b, '\n'))
	return err
}

// Receive reads one message into v, honouring ctx's deadline.
func (c *Conn) Receive(ctx context.Context, v any) error {
	if d, ok := ctx.Deadline(); ok {
		_ = c.c.SetReadDeadline(d)
		defer c.c.SetReadDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = c.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	line, err := c.readLine()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	return json.Unmarshal(line, v)
}

func (c *Conn) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, err := c.r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine {
			return nil, errors.New("control: message too long")
		}
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// SendFile sends one message with a descriptor attached (SCM_RIGHTS).
func (c *Conn) SendFile(v any, f *os.File) error {
	uc, ok := c.c.(*net.UnixConn)
	if !ok {
		return errors.New("control: not a Unix socket")
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, _, err = uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(f.Fd())), nil)
	return err
}

// ReceiveWithFile reads one message, with the descriptor sent along with
// it if any (nil otherwise). Only for a peer that sends one message at a
// time and waits: the message must arrive in one read.
func (c *Conn) ReceiveWithFile(v any) (*os.File, error) {
	uc, ok := c.c.(*net.UnixConn)
	if !ok {
		return nil, errors.New("control: not a Unix socket")
	}
	buf := make([]byte, maxLine)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, io.EOF
	}
	var f *os.File
	if oobn > 0 {
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for i := range msgs {
				if fds, err := unix.ParseUnixRights(&msgs[i]); err == nil {
					for j, fd := range fds {
						if j == 0 && f == nil {
							unix.CloseOnExec(fd)
							f = os.NewFile(uintptr(fd), "door")
						} else {
							unix.Close(fd)
						}
					}
				}
			}
		}
	}
	if err := json.Unmarshal(buf[:n], v); err != nil {
		if f != nil {
			f.Close()
		}
		return nil, err
	}
	return f, nil
}

// Post sends a request (with f, when not nil, attached) without waiting
// for its reply: the supervisor answers requests in order, and the next
// Call reads the replies owed first.
func (c *Conn) Post(req Request, f *os.File) error {
	var err error
	if f != nil {
		err = c.SendFile(req, f)
	} else {
		err = c.Send(req)
	}
	if err == nil {
		c.posted++
	}
	return err
}

// Call sends a request and reads its reply, after those owed to earlier
// Posts: a posted request that was refused is the reply returned, once
// this request's own has been read.
func (c *Conn) Call(ctx context.Context, req Request) (Reply, error) {
	var r Reply
	if err := c.Send(req); err != nil {
		return r, err
	}
	var refused *Reply
	for ; c.posted > 0; c.posted-- {
		var owed Reply
		if err := c.Receive(ctx, &owed); err != nil {
			return r, err
		}
		if !owed.OK && refused == nil {
			refused = &owed
		}
	}
	if err := c.Receive(ctx, &r); err != nil {
		return r, err
	}
	if refused != nil {
		return *refused, nil
	}
	return r, nil
}

// Join registers a session with the supervisor at path. On success the
// returned connection is the session: keep it open for as long as the
// session runs; closing it (or dying) ends it. A sandbox that is ending,
// or a supervisor that is gone, is reported as ErrEnded: start a new one.
func Join(ctx context.Context, path string, req Request) (*Conn, Reply, error) {
	req.Op = OpJoin
	c, err := Dial(ctx, path)
	if err != nil {
		return nil, Reply{}, fmt.Errorf("%w: %v", ErrEnded, err)
	}
	r, err := c.Call(ctx, req)
	if err != nil {
		c.Close()
		if ctx.Err() != nil {
			return nil, r, ctx.Err()
		}
		return nil, r, fmt.Errorf("%w: %v", ErrEnded, err)
	}
	if !r.OK {
		c.Close()
		if r.Ending {
			return nil, r, fmt.Errorf("%w: %s", ErrEnded, r.Reason)
		}
		return nil, r, fmt.Errorf("the sandbox's supervisor refused the session: %s", r.Reason)
	}
	return c, r, nil
}

// ErrEnded: the sandbox ended (or is ending) before the request.
var ErrEnded = errors.New("the sandbox has ended")

// Once sends one request on a fresh connection and returns the reply.
func Once(ctx context.Context, path string, req Request) (Reply, error) {
	c, err := Dial(ctx, path)
	if err != nil {
		return Reply{}, fmt.Errorf("%w: %v", ErrEnded, err)
	}
	defer c.Close()
	return c.Call(ctx, req)
}
