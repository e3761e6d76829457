package nixdaemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// fuzzVersions are the negotiated versions a fuzz input can pick with its
// first byte: each side of every threshold this package branches on.
var fuzzVersions = []ProtocolVersion{
	proto(21), proto(25), proto(26), proto(27), proto(28), proto(29), proto(30),
	proto(33), proto(34), proto(35), proto(37), proto(38),
}

func fuzzVersion(b byte) ProtocolVersion { return fuzzVersions[int(b)%len(fuzzVersions)] }

func seedLogFrames() [][]byte {
	start := script().u64(stderrStartActivity).u64(1).u64(uint64(VerbosityInfo)).u64(uint64(ActBuild)).
		str("building '/nix/store/a.drv'").
		u64(4).u64(fieldString).str("/nix/store/a.drv").u64(fieldString).str("").u64(fieldInt).u64(1).u64(fieldInt).u64(1).
		u64(0)
	result := script().u64(stderrResult).u64(1).u64(uint64(ResProgress)).
		u64(4).u64(fieldInt).u64(1).u64(fieldInt).u64(2).u64(fieldInt).u64(0).u64(fieldInt).u64(0)
	logLine := script().u64(stderrResult).u64(1).u64(uint64(ResBuildLogLine)).u64(1).u64(fieldString).str("hello world")
	next := script().u64(stderrNext).str("warning: a warning\n")
	write := script().u64(stderrWrite).str("data")
	stop := script().u64(stderrStopActivity).u64(1)
	all := func(parts ...*request) []byte {
		var b bytes.Buffer
		for _, p := range parts {
			b.Write(p.Bytes())
		}
		return b.Bytes()
	}
	return [][]byte{
		all(start, result, logLine, next, write, stop, script().last()),
		all(next, structuredError("build failed", "while building")),
		all(script().u64(stderrError).str("old style").u64(1)),
		all(start, stop, script().u64(stderrRead).u64(8)),
		all(script().last()),
	}
}

// FuzzReadLogMessages feeds arbitrary bytes to the stderr/log reader: it
// must return (nil, a DaemonError, a ProtocolError or an I/O error), never
// panic, and hand out only well-typed events.
func FuzzReadLogMessages(f *testing.F) {
	for _, seed := range seedLogFrames() {
		for _, v := range []byte{0, 8, 11} { // 1.21, 1.34, 1.38
			f.Add(append([]byte{v}, seed...))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		v := fuzzVersion(data[0])
		r := newReader(bytes.NewReader(data[1:]))
		r.reset("fuzz")
		err := readStderr(r, v, func(e Event) {
			if e.Kind < EventLog || e.Kind > EventWrite {
				t.Fatalf("event of unknown kind %d", e.Kind)
			}
			for _, fld := range e.Fields {
				switch fld.(type) {
				case uint64, string:
				default:
					t.Fatalf("field of type %T", fld)
				}
			}
		})
		if err == nil {
			return
		}
		var de *DaemonError
		var pe *ProtocolError
		if !errors.As(err, &de) && !errors.As(err, &pe) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("unexpected error kind %T: %v", err, err)
		}
	})
}

// bytesConn is a net.Conn that reads a fixed script and swallows writes;
// enough to drive a whole Client without goroutines.
type bytesConn struct{ r *bytes.Reader }

func (c *bytesConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *bytesConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *bytesConn) Close() error                     { return nil }
func (c *bytesConn) LocalAddr() net.Addr              { return nil }
func (c *bytesConn) RemoteAddr() net.Addr             { return nil }
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }

// conversation is a well-formed daemon side of: handshake, SetOptions
// (with log frames), IsValidPath, QueryPathInfo, QueryMissing, BuildPaths.
func conversation(v ProtocolVersion) []byte {
	const hash = "f1ed0dca9b59f1cb45e1bb4e9ca3a10f2d5c2aec7d8e6f1d9bd1e9c5e8a7f6b1"
	q := hello(v)
	q.Write(seedLogFrames()[0]) // SetOptions
	q.last().u64(1)             // IsValidPath
	q.last().u64(1).str("").str(hash).strs([]string{"/nix/store/a-x"}).u64(1).u64(2).bool(false).strs(nil).str("")
	q.last().strs([]string{"/nix/store/a.drv"}).strs(nil).strs(nil).u64(0).u64(0) // QueryMissing
	q.last().u64(1)                                                               // BuildPaths
	return q.Bytes()
}

func playConversation(ctx context.Context, data []byte) []error {
	c, err := NewClient(ctx, &bytesConn{r: bytes.NewReader(data)})
	if err != nil {
		return []error{err}
	}
	p := DerivationOutputs("/nix/store/a.drv")
	var errs []error
	errs = append(errs, c.SetOptions(ctx, DefaultSettings()))
	_, err = c.IsValidPath(ctx, "/nix/store/a-x")
	errs = append(errs, err)
	_, err = c.QueryPathInfo(ctx, "/nix/store/a-x")
	errs = append(errs, err)
	_, err = c.QueryMissing(ctx, p)
	errs = append(errs, err)
	errs = append(errs, c.BuildPaths(ctx, p))
	// Past the script: these must fail cleanly.
	_, err = c.BuildPathsWithResults(ctx, p)
	errs = append(errs, err)
	errs = append(errs, c.AddTempRoot(ctx, "/nix/store/a-x"), c.AddIndirectRoot(ctx, "/tmp/link"))
	return errs
}

func TestConversationSeeds(t *testing.T) {
	for _, v := range []ProtocolVersion{proto(21), proto(34), proto(35), proto(38)} {
		errs := playConversation(context.Background(), conversation(v))
		for i, err := range errs[:5] {
			if err != nil {
				t.Errorf("%s: step %d: %v", v, i, err)
			}
		}
		for _, err := range errs[5:] {
			if err == nil {
				t.Errorf("%s: a call past the end of the script succeeded", v)
			}
		}
	}
}

// FuzzClient plays arbitrary bytes as a whole daemon conversation:
// handshake, then every operation in turn until the client gives up.
func FuzzClient(f *testing.F) {
	for _, v := range []ProtocolVersion{proto(21), proto(34), proto(35), proto(38)} {
		f.Add(conversation(v))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		playConversation(context.Background(), data)
	})
}
