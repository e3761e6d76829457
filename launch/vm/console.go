package vm

import (
	"bytes"
	"io"
	"os"
	"strconv"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
	"github.com/claude-sandbox/claude-sandbox/internal/tty"
)

// The guest agent frames the command's output on a serial console with two
// markers, ECMA-48 application program commands that a terminal ignores:
//
//	ESC _ claude-sandbox:<nonce>:up ESC \          the command starts now
//	ESC _ claude-sandbox:<nonce>:enter ESC \       (on the enter console)
//	ESC _ claude-sandbox:<nonce>:exit=<N> ESC \    the command ended with status N
//
// Everything before the start marker is boot output (kept in a log, shown
// only when the boot fails); everything after the end marker is shutdown
// noise. The nonce is random per run, so text that merely resembles a marker
// (someone cat'ing this file in the guest) cannot end a session.

// markerScanner splits a console byte stream into payload bytes and markers.
type markerScanner struct {
	prefix  []byte
	matched int    // bytes of prefix matched so far (held back)
	tag     []byte // bytes after a full prefix, up to ESC \
	inTag   bool
}

const maxMarkerTag = 32

func newMarkerScanner(nonce string) *markerScanner {
	return &markerScanner{prefix: []byte("\x1b_claude-sandbox:" + nonce + ":")}
}

// feed passes p through: out gets payload bytes and mark gets each marker's
// tag ("up", "enter", "exit=3"), in stream order. A marker may be split
// across chunks: the part seen so far is held back until it completes or
// turns out to be ordinary output. The prefix has exactly one ESC, at its
// start, so after a mismatch matching restarts at the current byte.
func (s *markerScanner) feed(p []byte, out func([]byte), mark func(string)) {
	buf := make([]byte, 0, len(p)+len(s.prefix))
	flush := func() {
		if len(buf) > 0 {
			out(buf)
			buf = buf[len(buf):]
		}
	}
	for _, c := range p {
		if s.inTag {
			s.tag = append(s.tag, c)
			n := len(s.tag)
			if n >= 2 && s.tag[n-2] == 0x1b && s.tag[n-1] == '\\' {
				tag := string(s.tag[:n-2])
				s.inTag, s.tag = false, s.tag[:0]
				flush()
				mark(tag)
			} else if n > maxMarkerTag {
				// Not a marker after all: give back what was held.
				buf = append(append(buf, s.prefix...), s.tag...)
				s.inTag, s.tag = false, s.tag[:0]
			}
			continue
		}
		if c == s.prefix[s.matched] {
			s.matched++
			if s.matched == len(s.prefix) {
				s.matched, s.inTag = 0, true
			}
			continue
		}
		if s.matched > 0 {
			buf = append(buf, s.prefix[:s.matched]...)
			s.matched = 0
			if c == s.prefix[0] {
				s.matched = 1
				continue
			}
		}
		buf = append(buf, c)
	}
	flush()
}

// exitStatus reads the status of an "exit=N" tag.
func exitStatus(tag string) (int, bool) {
	rest, ok := bytes.CutPrefix([]byte(tag), []byte("exit="))
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(string(rest))
	if err != nil || n < 0 || n > 255 {
		return 0, false
	}
	return n, true
}

// kernelProgress recognises a kernel log line ("[    0.123456] …"): proof
// that the guest kernel runs, which a spinning nested-KVM guest never gives.
var kernelProgress = lazyregexp.New(`\[\s*\d+\.\d\d\d\d\d\d\]`)

// terminal is the host side of a console session: the user's terminal (or
// the pipes standing in for it).
type terminal struct {
	in, out   *os.File
	isTTY     bool // stdin is a terminal: relay raw bytes
	outTTY    bool
	rows      int
	cols      int
	restoreFn func()
}

func openTerminal(in, out *os.File) *terminal {
	t := &terminal{in: in, out: out, isTTY: tty.IsTerminal(int(in.Fd())), outTTY: tty.IsTerminal(int(out.Fd()))}
	for _, f := range []*os.File{out, in} {
		if rows, cols, ok := tty.Size(int(f.Fd())); ok {
			t.rows, t.cols = rows, cols
			break
		}
	}
	return t
}

// raw puts the terminal in raw mode (keys, Ctrl-C included, go to the
// guest, whose own line discipline handles them) until restore.
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

// stdinChunks reads the terminal in the background. The goroutine may
// outlive the session (a read on a terminal cannot be cancelled); its
// chunks are simply dropped then.
func (t *terminal) stdinChunks() <-chan []byte {
	ch := make(chan []byte, 16)
	go func() {
		defer close(ch)
		buf := make([]byte, 4096)
		for {
			n, err := t.in.Read(buf)
			if n > 0 {
				ch <- append([]byte(nil), buf[:n]...)
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// eof is what ends the guest command's input when ours ends: Ctrl-D, which
// the guest terminal (canonical mode) turns into end-of-file.
var eof = []byte{0x04}

// writeAll writes p or reports why not.
func writeAll(w io.Writer, p []byte) error {
	_, err := w.Write(p)
	return err
}
