package execstream

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"testing"
)

func TestFramesRoundTrip(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b)
	w.Request(Request{Argv: []string{"sh", "-c", "echo"}, TTY: true, Rows: 24, Cols: 80})
	w.Data(KindStdin, bytes.Repeat([]byte("x"), 100<<10))
	w.Resize(50, 132)
	w.Write(KindSignal, []byte{15})
	w.Exit(130)
	r := NewReader(&b)
	req, err := r.ReadRequest()
	if err != nil || req.Argv[2] != "echo" || !req.TTY || req.Rows != 24 {
		t.Fatalf("request = %+v, %v", req, err)
	}
	n := 0
	for {
		f, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch f.Kind {
		case KindStdin:
			n += len(f.Data)
		case KindResize:
			if rows, cols, ok := f.Size(); !ok || rows != 50 || cols != 132 {
				t.Errorf("resize %d %d %t", rows, cols, ok)
			}
		case KindExit:
			if st, ok := f.Status(); !ok || st != 130 {
				t.Errorf("status %d", st)
			}
		}
	}
	if n != 100<<10 {
		t.Errorf("%d input bytes, want %d (split into frames)", n, 100<<10)
	}
}

// TestReaderBoundsFrames: a peer announcing a huge frame is refused before
// anything is allocated; a session must begin with its request.
func TestReaderBoundsFrames(t *testing.T) {
	var hdr [5]byte
	hdr[0] = byte(KindStdout)
	binary.BigEndian.PutUint32(hdr[1:], 1<<31)
	if _, err := NewReader(bytes.NewReader(hdr[:])).Next(); err == nil || !strings.Contains(err.Error(), "bytes") {
		t.Errorf("a 2 GiB frame: err = %v", err)
	}
	var b bytes.Buffer
	NewWriter(&b).Exit(0)
	if _, err := NewReader(&b).ReadRequest(); err == nil {
		t.Error("a session without a request was accepted")
	}
	b.Reset()
	NewWriter(&b).Request(Request{})
	if _, err := NewReader(&b).ReadRequest(); err == nil {
		t.Error("a request without a command was accepted")
	}
}

// TestEndIsLast: once End is sent nothing follows it, so the control
// messages after it are never cut by a late input frame.
func TestEndIsLast(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b)
	if err := w.End(); err != nil {
		t.Fatal(err)
	}
	if err := w.Data(KindStdin, []byte("late")); err != ErrEnded {
		t.Errorf("a write after End: %v, want ErrEnded", err)
	}
	f, err := NewReader(&b).Next()
	if err != nil || f.Kind != KindEnd || b.Len() != 0 {
		t.Errorf("frame %v, %v, %d bytes after it", f.Kind, err, b.Len())
	}
}
