// Package execstream is the conversation of one session of a VM sandbox:
// the request saying what to run, then frames both ways (input, output,
// window size, signals, the exit status). The launcher, the supervisor and
// the guest agent speak it on every hop, so the supervisor relays a
// session by copying bytes between the launcher's control connection and
// the agent's stream without reading them.
//
// It owns the wire format only; what runs and as whom is the agent's, who
// may ask is the supervisor's.
package execstream

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Request is what a session runs. Env nil means the sandbox's own
// environment (the one its first launch decided); Cwd "" the project.
type Request struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	Cwd  string   `json:"cwd,omitempty"`
	// TTY: the command gets a terminal of its own (the launcher's is one);
	// otherwise pipes, with stdout and stderr kept apart.
	TTY  bool `json:"tty,omitempty"`
	Rows int  `json:"rows,omitempty"`
	Cols int  `json:"cols,omitempty"`
}

// Kind is a frame's type.
type Kind uint8

const (
	KindRequest  Kind = iota + 1 // JSON Request: the first frame of a session, to the agent
	KindStarted                  // the command runs (empty)
	KindError                    // the command could not start: text, then the stream ends
	KindStdin                    // input bytes
	KindStdinEOF                 // input ended
	KindStdout                   // output bytes (a terminal session's only output)
	KindStderr                   // error output bytes
	KindResize                   // rows, cols: uint16 each
	KindSignal                   // one byte: a signal number for the command's process group
	KindExit                     // int32: the exit status (128+n for a signal), the last frame
	// KindEnd ends the frames on a launcher's control connection (never
	// on the agent's stream): control messages follow, a session's leave
	// first. The launcher sends it once the exit status came; the
	// supervisor sends it instead of one when the guest ended first.
	KindEnd
)

// MaxPayload bounds one frame; a peer announcing more is broken or hostile.
const MaxPayload = 1 << 20

// Frame is one unit on a session stream.
type Frame struct {
	Kind Kind
	Data []byte
}

// Writer writes frames; safe for concurrent use (output and exit are sent
// from different goroutines).
type Writer struct {
	mu    sync.Mutex
	w     io.Writer
	ended bool
}

// ErrEnded is a write after End.
var ErrEnded = errors.New("execstream: the frames have ended")

func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write sends one frame.
func (w *Writer) Write(k Kind, data []byte) error {
	if len(data) > MaxPayload {
		return fmt.Errorf("execstream: a frame of %d bytes", len(data))
	}
	var hdr [5]byte
	hdr[0] = byte(k)
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(data)))
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		return ErrEnded
	}
	if k == KindEnd {
		w.ended = true
	}
	if _, err := w.w.Write(hdr[:]); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	_, err := w.w.Write(data)
	return err
}

// End sends KindEnd; every later write fails with ErrEnded, so no frame
// a goroutine still had to send follows it.
func (w *Writer) End() error { return w.Write(KindEnd, nil) }

// Data sends b in frames of kind k, split as MaxPayload requires.
func (w *Writer) Data(k Kind, b []byte) error {
	for len(b) > 0 {
		n := min(len(b), 32<<10)
		if err := w.Write(k, b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// Request sends the session's request.
func (w *Writer) Request(r Request) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return w.Write(KindRequest, b)
}

// Resize sends a window size.
func (w *Writer) Resize(rows, cols int) error {
	var b [4]byte
	binary.BigEndian.PutUint16(b[0:], uint16(clamp(rows)))
	binary.BigEndian.PutUint16(b[2:], uint16(clamp(cols)))
	return w.Write(KindResize, b[:])
}

// Exit sends the exit status.
func (w *Writer) Exit(status int) error {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(int32(status)))
	return w.Write(KindExit, b[:])
}

func clamp(n int) int { return max(0, min(n, 0xffff)) }

// Reader reads frames.
type Reader struct {
	r   io.Reader
	hdr [5]byte
}

func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Next reads one frame; io.EOF at a clean end between frames.
func (r *Reader) Next() (Frame, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Frame{}, err
		}
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(r.hdr[1:])
	if n > MaxPayload {
		return Frame{}, fmt.Errorf("execstream: a frame of %d bytes", n)
	}
	f := Frame{Kind: Kind(r.hdr[0])}
	if n > 0 {
		f.Data = make([]byte, n)
		if _, err := io.ReadFull(r.r, f.Data); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
	}
	return f, nil
}

// ReadRequest reads the first frame of a session, which must be its request.
func (r *Reader) ReadRequest() (Request, error) {
	var req Request
	f, err := r.Next()
	if err != nil {
		return req, err
	}
	if f.Kind != KindRequest {
		return req, fmt.Errorf("execstream: a session began with frame kind %d", f.Kind)
	}
	if err := json.Unmarshal(f.Data, &req); err != nil {
		return req, fmt.Errorf("execstream: the request: %w", err)
	}
	if len(req.Argv) == 0 {
		return req, errors.New("execstream: a request without a command")
	}
	return req, nil
}

// Size reads a Resize frame's payload.
func (f Frame) Size() (rows, cols int, ok bool) {
	if f.Kind != KindResize || len(f.Data) != 4 {
		return 0, 0, false
	}
	return int(binary.BigEndian.Uint16(f.Data[0:])), int(binary.BigEndian.Uint16(f.Data[2:])), true
}

// Status reads an Exit frame's payload.
func (f Frame) Status() (int, bool) {
	if f.Kind != KindExit || len(f.Data) != 4 {
		return 0, false
	}
	return int(int32(binary.BigEndian.Uint32(f.Data))), true
}
