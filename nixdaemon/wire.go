package nixdaemon

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/nix-community/go-nix/pkg/wire"
)

// Bounds on what the daemon may make us allocate. Each applies per item;
// frameBudget additionally caps the sum of all variable-length data in one
// stderr message or one reply, so many items just under their own bound
// cannot add up to gigabytes either.
const (
	maxPathLen        = 4 << 10  // a store path (Nix caps names at 211 bytes)
	maxDerivedPathLen = 64 << 10 // a store path with a list of outputs
	maxLogLen         = 4 << 20  // one log line / activity text / error message
	maxFieldCount     = 64       // fields of one activity or result
	maxTraceCount     = 1 << 10  // traces in one error
	maxListLen        = 1 << 20  // entries in one path set or map
	maxHashLen        = 1 << 10  // a hash string
	maxSigLen         = 1 << 10  // one signature
	frameBudget       = 64 << 20 // all strings of one message or reply
	preallocCap       = 1 << 10  // never preallocate more list entries than this
	eagerAlloc        = 64 << 10 // strings up to this size are allocated up front
	wordSize          = 8
)

// reader reads wire values from the daemon with bounds, using go-nix's
// pkg/wire for the encoding. Every variable-length read names its own
// maximum and also draws from budget, which reset() refills at the start
// of each message or reply.
type reader struct {
	br     *bufio.Reader
	src    *ioTracker
	op     string
	budget int64

	// capture, when set, receives a copy of every byte consumed: the
	// gateway's relay parses a message and forwards exactly the bytes it
	// parsed, to the other side or into a buffer held until a decision.
	capture    io.Writer
	captureErr error // the first write to capture that failed
}

// in is what every read goes through: the buffered stream, or while
// capturing, the stream teed into capture.
func (r *reader) in() io.Reader {
	if r.capture == nil {
		return r.br
	}
	return captureReader{r}
}

type captureReader struct{ r *reader }

func (c captureReader) Read(p []byte) (int, error) {
	n, err := c.r.br.Read(p)
	if n > 0 {
		if _, werr := c.r.capture.Write(p[:n]); werr != nil {
			if c.r.captureErr == nil {
				c.r.captureErr = werr
			}
			return n, werr
		}
	}
	return n, err
}

// ioTracker remembers whether the transport itself failed, so a failed
// wire call can be told apart as an I/O error (EOF, deadline, closed) or
// as malformed data (bad padding, bad boolean).
type ioTracker struct {
	r   io.Reader
	err error
}

func (t *ioTracker) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && t.err == nil {
		t.err = err
	}
	return n, err
}

func newReader(r io.Reader) *reader {
	t := &ioTracker{r: r}
	return &reader{br: bufio.NewReaderSize(t, 64<<10), src: t, budget: frameBudget}
}

func (r *reader) reset(op string) {
	r.op = op
	r.budget = frameBudget
}

// fail turns an error from a wire call into an I/O error (transport
// failed, wrapped so errors.Is finds the cause) or a ProtocolError.
func (r *reader) fail(what string, err error) error {
	if r.captureErr != nil {
		return fmt.Errorf("nixdaemon: %s: forwarding %s: %w", r.op, what, r.captureErr)
	}
	if r.src.err != nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("nixdaemon: %s: reading %s: %w", r.op, what, err)
	}
	return &ProtocolError{Op: r.op, Msg: what, Err: err}
}

func (r *reader) uint64(what string) (uint64, error) {
	n, err := wire.ReadUint64(r.in())
	if err != nil {
		return 0, r.fail(what, err)
	}
	return n, nil
}

// bool reads a boolean; only 0 and 1 are accepted.
func (r *reader) bool(what string) (bool, error) {
	b, err := wire.ReadBool(r.in())
	if err != nil {
		return false, r.fail(what, err)
	}
	return b, nil
}

// string reads a length-prefixed, padded string of at most max bytes.
func (r *reader) string(what string, max uint64) (string, error) {
	// Peek at the length first, so an oversized one is refused before
	// anything is allocated for it, and reported as a protocol error.
	hdr, err := r.br.Peek(wordSize)
	if err != nil {
		return "", r.fail(what, err)
	}
	n := binary.LittleEndian.Uint64(hdr)
	if n > max {
		return "", protoErr(r.op, "%s: length %d exceeds maximum %d", what, n, max)
	}
	if n+wordSize > uint64(r.budget) {
		return "", protoErr(r.op, "%s: message exceeds %d bytes", what, frameBudget)
	}
	r.budget -= int64(n) + wordSize
	// The body is read here rather than with wire.ReadString, which
	// discards the error of its padding check (a deferred Close): like Nix,
	// we refuse non-zero padding, the first sign of a stream out of step.
	if err := r.consumePeeked(hdr); err != nil {
		return "", r.fail(what, err)
	}
	buf, err := r.readN(n + (wordSize-n%wordSize)%wordSize)
	if err != nil {
		return "", r.fail(what, err)
	}
	for _, b := range buf[n:] {
		if b != 0 {
			return "", protoErr(r.op, "%s: non-zero padding", what)
		}
	}
	return string(buf[:n]), nil
}

// readN reads exactly n bytes. Past a small size the buffer grows with the
// data actually received, so a peer announcing a large string must also
// send it before we hold that much memory.
func (r *reader) readN(n uint64) ([]byte, error) {
	if n <= eagerAlloc {
		buf := make([]byte, n)
		_, err := io.ReadFull(r.in(), buf)
		return buf, err
	}
	var b bytes.Buffer
	b.Grow(eagerAlloc)
	if _, err := io.CopyN(&b, r.in(), int64(n)); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// consumePeeked consumes the bytes just peeked (hdr), copying them to
// capture first.
func (r *reader) consumePeeked(hdr []byte) error {
	if r.capture != nil {
		if _, err := r.capture.Write(hdr); err != nil {
			if r.captureErr == nil {
				r.captureErr = err
			}
			return err
		}
	}
	_, err := r.br.Discard(len(hdr))
	return err
}

// skipString consumes a string of at most max bytes without holding it:
// its bytes stream through (to capture, when set), so a large body costs
// no memory. It does not draw from the budget for the same reason.
func (r *reader) skipString(what string, max uint64) (uint64, error) {
	n, err := r.uint64(what + " length")
	if err != nil {
		return 0, err
	}
	if n > max {
		return 0, protoErr(r.op, "%s: length %d exceeds maximum %d", what, n, max)
	}
	if err := r.skipBytes(what, n); err != nil {
		return 0, err
	}
	return n, nil
}

// skipBytes consumes n bytes of data and the zero padding after them.
func (r *reader) skipBytes(what string, n uint64) error {
	if _, err := io.CopyN(io.Discard, r.in(), int64(n)); err != nil {
		return r.fail(what, err)
	}
	var pad [wordSize]byte
	p := pad[:(wordSize-n%wordSize)%wordSize]
	if _, err := io.ReadFull(r.in(), p); err != nil {
		return r.fail(what, err)
	}
	for _, b := range p {
		if b != 0 {
			return protoErr(r.op, "%s: non-zero padding", what)
		}
	}
	return nil
}

// count reads a list length, bounded by max and by what the budget can
// still hold (every entry costs at least one word).
func (r *reader) count(what string, max uint64) (int, error) {
	n, err := r.uint64(what + " count")
	if err != nil {
		return 0, err
	}
	if n > max {
		return 0, protoErr(r.op, "%s: count %d exceeds maximum %d", what, n, max)
	}
	if n > uint64(r.budget)/wordSize {
		return 0, protoErr(r.op, "%s: message exceeds %d bytes", what, frameBudget)
	}
	return int(n), nil
}

// strings reads a list (or set) of strings.
func (r *reader) strings(what string, maxCount, maxLen uint64) ([]string, error) {
	n, err := r.count(what, maxCount)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, min(n, preallocCap))
	for range n {
		s, err := r.string(what, maxLen)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// stringMap reads a map<string, string>.
func (r *reader) stringMap(what string, maxCount, maxLen uint64) (map[string]string, error) {
	n, err := r.count(what, maxCount)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, min(n, preallocCap))
	for range n {
		k, err := r.string(what+" key", maxLen)
		if err != nil {
			return nil, err
		}
		v, err := r.string(what+" value", maxLen)
		if err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

// request builds one request in memory, so it goes out in a single write.
// Writes to a bytes.Buffer cannot fail, so the wire errors are dropped on
// purpose here and nowhere else.
type request struct{ bytes.Buffer }

func (q *request) u64(n uint64) *request {
	_ = wire.WriteUint64(&q.Buffer, n)
	return q
}

func (q *request) bool(b bool) *request {
	_ = wire.WriteBool(&q.Buffer, b)
	return q
}

func (q *request) str(s string) *request {
	_ = wire.WriteString(&q.Buffer, s)
	return q
}

func (q *request) strs(ss []string) *request {
	q.u64(uint64(len(ss)))
	for _, s := range ss {
		q.str(s)
	}
	return q
}
