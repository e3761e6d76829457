package nixdaemon

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// A scripted daemon on the other end of a net.Pipe: it writes a fixed byte
// script and records everything the client sends.

type fakeDaemon struct {
	client net.Conn
	sent   chan []byte // what the client wrote, once the pipe closes
}

const neverHangUp = -1

// startFake serves script. With hangUpAfter >= 0 the daemon closes its end
// once the script is written and the client has sent that many bytes (a
// truncated reply); with neverHangUp it stays silent until the test ends.
func startFake(t *testing.T, script []byte, hangUpAfter int) *fakeDaemon {
	t.Helper()
	client, server := net.Pipe()
	f := &fakeDaemon{client: client, sent: make(chan []byte, 1)}
	written := make(chan struct{})
	go func() {
		var got []byte
		buf := make([]byte, 4096)
		hungUp := false
		for {
			if !hungUp && hangUpAfter >= 0 && len(got) >= hangUpAfter {
				<-written
				_ = server.Close()
				hungUp = true
			}
			n, err := server.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
		}
		f.sent <- got
	}()
	go func() {
		// Fails only when the client closed early, which some tests expect.
		_, _ = server.Write(script)
		close(written)
	}()
	t.Cleanup(func() {
		_ = server.Close()
		_ = client.Close()
	})
	return f
}

// clientSent closes the client and returns everything it wrote.
func (f *fakeDaemon) clientSent(t *testing.T) []byte {
	t.Helper()
	_ = f.client.Close()
	select {
	case b := <-f.sent:
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("fake daemon did not see the client close")
		return nil
	}
}

// script builds daemon output with the same encoder as requests.
func script() *request { return new(request) }

func (q *request) last() *request { return q.u64(stderrLast) }

// hello is the daemon's side of a successful handshake at version v (the
// client offers ClientVersion, so the negotiated version is the lower).
func hello(v ProtocolVersion) *request {
	q := script().u64(workerMagic2).u64(uint64(v))
	n := min(v, ClientVersion).Minor()
	if n >= verFeatureExchange {
		q.strs([]string{"some-future-feature"})
	}
	if n >= verDaemonNixVersion {
		q.str("2.99.0")
	}
	if n >= verTrust {
		q.u64(uint64(TrustTrusted))
	}
	return q.last()
}

func structuredError(msg string, traces ...string) *request {
	q := script().u64(stderrError).str("Error").u64(uint64(VerbosityError)).str("Error").str(msg).u64(0)
	q.u64(uint64(len(traces)))
	for _, tr := range traces {
		q.u64(0).str(tr)
	}
	return q
}

func fakeClient(t *testing.T, q *request, opts ...Option) (*Client, *fakeDaemon) {
	t.Helper()
	f := startFake(t, q.Bytes(), neverHangUp)
	c, err := NewClient(ctxT(t, 5*time.Second), f.client, opts...)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	return c, f
}

func u64s(b []byte) []uint64 {
	var out []uint64
	for len(b) >= 8 {
		out = append(out, binary.LittleEndian.Uint64(b))
		b = b[8:]
	}
	return out
}

func TestFakeHandshakeVersions(t *testing.T) {
	for _, tc := range []struct {
		daemon     ProtocolVersion
		negotiated ProtocolVersion
		wantSent   []uint64 // after magic and our version
		nixVersion string
		trust      TrustStatus
	}{
		{proto(21), proto(21), []uint64{0, 0}, "", TrustUnknown},
		{proto(32), proto(32), []uint64{0, 0}, "", TrustUnknown},
		{proto(34), proto(34), []uint64{0, 0}, "2.99.0", TrustUnknown},
		{proto(35), proto(35), []uint64{0, 0}, "2.99.0", TrustTrusted},
		{proto(38), proto(38), []uint64{0 /* no features */, 0, 0}, "2.99.0", TrustTrusted},
		{proto(41), ClientVersion, []uint64{0, 0, 0}, "2.99.0", TrustTrusted},
	} {
		t.Run(tc.daemon.String(), func(t *testing.T) {
			c, f := fakeClient(t, hello(tc.daemon))
			if c.ProtocolVersion() != tc.negotiated || c.DaemonProtocolVersion() != tc.daemon {
				t.Errorf("versions %s/%s, want %s/%s", c.ProtocolVersion(), c.DaemonProtocolVersion(), tc.negotiated, tc.daemon)
			}
			if c.DaemonNixVersion() != tc.nixVersion || c.Trust() != tc.trust {
				t.Errorf("nix version %q trust %s, want %q %s", c.DaemonNixVersion(), c.Trust(), tc.nixVersion, tc.trust)
			}
			want := append([]uint64{workerMagic1, uint64(ClientVersion)}, tc.wantSent...)
			if got := u64s(f.clientSent(t)); !slices.Equal(got, want) {
				t.Errorf("client sent %#x, want %#x", got, want)
			}
		})
	}
}

func TestFakeHandshakeEventsAndStartupError(t *testing.T) {
	var got []Event
	q := script().u64(workerMagic2).u64(uint64(proto(34))).str("2.8.0").
		u64(stderrNext).str("warning: something\n").last()
	fakeClient(t, q, WithEvents(func(e Event) { got = append(got, e) }))
	if len(got) != 1 || got[0].Kind != EventLog || got[0].Text != "warning: something" {
		t.Errorf("handshake events = %+v", got)
	}

	q = script().u64(workerMagic2).u64(uint64(proto(34))).str("2.8.0")
	q.Write(structuredError("cannot open store").Bytes())
	f := startFake(t, q.Bytes(), neverHangUp)
	_, err := NewClient(ctxT(t, 5*time.Second), f.client)
	var de *DaemonError
	if !errors.As(err, &de) || de.Message != "cannot open store" {
		t.Fatalf("startup error: %v, want DaemonError", err)
	}
}

func TestFakeBadMagic(t *testing.T) {
	f := startFake(t, script().u64(0x12345678).u64(uint64(proto(34))).Bytes(), neverHangUp)
	_, err := NewClient(ctxT(t, 5*time.Second), f.client)
	var pe *ProtocolError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "magic") {
		t.Fatalf("err = %v, want ProtocolError about the magic", err)
	}
}

func TestFakeVersionTooOld(t *testing.T) {
	for _, v := range []uint64{uint64(proto(20)), 2<<8 | 1, 0x10000} {
		f := startFake(t, script().u64(workerMagic2).u64(v).Bytes(), neverHangUp)
		_, err := NewClient(ctxT(t, 5*time.Second), f.client)
		var ve *VersionError
		var pe *ProtocolError
		if !errors.As(err, &ve) && !errors.As(err, &pe) {
			t.Errorf("daemon version %#x: err = %v, want VersionError (or ProtocolError out of range)", v, err)
		}
		if ve != nil && ve.Min != MinDaemonVersion {
			t.Errorf("VersionError.Min = %s", ve.Min)
		}
	}
}

func TestFakeTruncated(t *testing.T) {
	full := hello(proto(35)).Bytes()
	// Cut the handshake at every length, including mid-word.
	for n := 0; n < len(full); n++ {
		// The daemon hangs up once the client sent all it would: its
		// greeting, and once it has read the daemon's version the two
		// obsolete post-handshake words.
		clientSends := 2 * 8
		if n >= 2*8 {
			clientSends = 4 * 8
		}
		f := startFake(t, full[:n], clientSends)
		_, err := NewClient(ctxT(t, 5*time.Second), f.client)
		if err == nil {
			t.Fatalf("handshake cut at %d/%d bytes succeeded", n, len(full))
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, new(*ProtocolError)) {
			t.Errorf("cut at %d: err = %v, want ErrUnexpectedEOF", n, err)
		}
	}
	// A truncated reply to an operation.
	q := hello(proto(34))
	q.last().u64(1) // IsValidPath: LAST, then a reply word…
	q.u64(stderrLast)
	b := q.Bytes()
	const twoRequests = 2 * (8 + 8 + 16)             // op, path length, "/nix/store/x" padded
	f := startFake(t, b[:len(b)-3], 4*8+twoRequests) // …and a second reply cut short
	c, err := NewClient(ctxT(t, 5*time.Second), f.client)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.IsValidPath(ctxT(t, 5*time.Second), "/nix/store/x"); err != nil || !ok {
		t.Fatalf("first IsValidPath = %v, %v", ok, err)
	}
	if _, err := c.IsValidPath(ctxT(t, 5*time.Second), "/nix/store/x"); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated reply: err = %v, want ErrUnexpectedEOF", err)
	}
	if _, err := c.IsValidPath(ctxT(t, 5*time.Second), "/nix/store/x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("after a broken reply: err = %v, want ErrClosed", err)
	}
}

// allocated runs f and returns the bytes allocated meanwhile.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func TestFakeOversizedLengths(t *testing.T) {
	const huge = 1 << 40
	for name, q := range map[string]*request{
		"nix version": script().u64(workerMagic2).u64(uint64(proto(34))).u64(huge),
		"log line":    script().u64(workerMagic2).u64(uint64(proto(34))).str("2.8").u64(stderrNext).u64(huge),
		"field count": script().u64(workerMagic2).u64(uint64(proto(34))).str("2.8").
			u64(stderrResult).u64(1).u64(uint64(ResProgress)).u64(huge),
		"feature count": script().u64(workerMagic2).u64(uint64(proto(38))).u64(huge),
		"error message": script().u64(workerMagic2).u64(uint64(proto(34))).str("2.8").
			u64(stderrError).str("Error").u64(0).str("").u64(huge),
		"trace count": script().u64(workerMagic2).u64(uint64(proto(34))).str("2.8").
			u64(stderrError).str("Error").u64(0).str("").str("m").u64(0).u64(huge),
	} {
		t.Run(name, func(t *testing.T) {
			f := startFake(t, q.Bytes(), neverHangUp)
			var err error
			n := allocated(func() { _, err = NewClient(ctxT(t, 5*time.Second), f.client) })
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want ProtocolError", err)
			}
			if n > 4<<20 {
				t.Errorf("allocated %d bytes refusing a %d-byte length", n, uint64(huge))
			}
		})
	}

	// In a reply: a path set claiming 2^40 entries.
	q := hello(proto(34)).last().u64(huge)
	c, _ := fakeClient(t, q)
	var err error
	n := allocated(func() { _, err = c.QueryMissing(ctxT(t, 5*time.Second), OpaquePath("/nix/store/x")) })
	var pe *ProtocolError
	if !errors.As(err, &pe) || n > 4<<20 {
		t.Fatalf("huge list: err = %v, allocated %d", err, n)
	}
}

// Many strings each under its own bound must still not add up past the
// per-reply budget.
func TestFakeReplyBudget(t *testing.T) {
	q := hello(proto(34)).last().u64(maxListLen) // willBuild: 2^20 entries…
	big := strings.Repeat("x", maxPathLen)       // …of 4 KiB each would be 4 GiB
	q.u64(maxListLen)
	for range frameBudget/maxPathLen + 1 {
		q.str(big)
	}
	c, _ := fakeClient(t, q)
	_, err := c.QueryMissing(ctxT(t, 10*time.Second), OpaquePath("/nix/store/x"))
	var pe *ProtocolError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("err = %v, want ProtocolError for the budget", err)
	}
}

func TestFakeUnknownStderrMessage(t *testing.T) {
	c, _ := fakeClient(t, hello(proto(34)).u64(0xdeadbeef))
	_, err := c.IsValidPath(ctxT(t, 5*time.Second), "/nix/store/x")
	var pe *ProtocolError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "0xdeadbeef") {
		t.Fatalf("err = %v, want ProtocolError naming the type", err)
	}
}

func TestFakeStderrReadRefused(t *testing.T) {
	c, _ := fakeClient(t, hello(proto(34)).u64(stderrRead).u64(4096))
	_, err := c.IsValidPath(ctxT(t, 5*time.Second), "/nix/store/x")
	if !errors.As(err, new(*ProtocolError)) {
		t.Fatalf("err = %v, want ProtocolError", err)
	}
}

func TestFakeMalformedValues(t *testing.T) {
	for name, q := range map[string]*request{
		"bool 2":         hello(proto(34)).last().u64(2),
		"field type 7":   hello(proto(34)).u64(stderrResult).u64(1).u64(105).u64(1).u64(7),
		"padding":        hello(proto(34)).u64(stderrNext).u64(1).u64(0xff00),
		"error type":     hello(proto(34)).u64(stderrError).str("Oops"),
		"error with pos": hello(proto(34)).u64(stderrError).str("Error").u64(0).str("").str("m").u64(1),
		"trace with pos": hello(proto(34)).u64(stderrError).str("Error").u64(0).str("").str("m").u64(0).u64(1).u64(1),
		"bad trust":      script().u64(workerMagic2).u64(uint64(proto(35))).str("2.18").u64(3),
	} {
		t.Run(name, func(t *testing.T) {
			f := startFake(t, q.Bytes(), neverHangUp)
			c, err := NewClient(ctxT(t, 5*time.Second), f.client)
			if err == nil {
				_, err = c.IsValidPath(ctxT(t, 5*time.Second), "/nix/store/x")
			}
			if !errors.As(err, new(*ProtocolError)) {
				t.Fatalf("err = %v, want ProtocolError", err)
			}
		})
	}
}

func TestFakeDaemonError(t *testing.T) {
	q := hello(proto(34))
	q.Write(structuredError("path '/nix/store/x' is \x1b[1mnot\x1b[0m valid", "while doing a thing").Bytes())
	q.last().u64(1) // the next call succeeds: the connection survived
	c, _ := fakeClient(t, q)
	_, err := c.IsValidPath(ctxT(t, 5*time.Second), "/nix/store/x")
	var de *DaemonError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v, want DaemonError", err)
	}
	if de.Op != "IsValidPath" || !slices.Equal(de.Traces, []string{"while doing a thing"}) {
		t.Errorf("DaemonError = %+v", de)
	}
	if got := err.Error(); got != "nix daemon: IsValidPath: path '/nix/store/x' is not valid" {
		t.Errorf("Error() = %q (ANSI codes should be gone)", got)
	}
	if ok, err := c.IsValidPath(ctxT(t, 5*time.Second), "/nix/store/x"); err != nil || !ok {
		t.Fatalf("call after DaemonError = %v, %v", ok, err)
	}
}

func TestFakeOldStyleDaemonError(t *testing.T) {
	q := hello(proto(25)).u64(stderrError).str("build failed").u64(100)
	c, _ := fakeClient(t, q)
	err := c.BuildPaths(ctxT(t, 5*time.Second), DerivationOutputs("/nix/store/x.drv"))
	var de *DaemonError
	if !errors.As(err, &de) || de.Message != "build failed" || de.Status != 100 {
		t.Fatalf("err = %#v, want DaemonError with status 100", err)
	}
}

func TestFakeEvents(t *testing.T) {
	q := hello(proto(34)).
		u64(stderrStartActivity).u64(7).u64(uint64(VerbosityInfo)).u64(uint64(ActBuild)).
		str("building '/nix/store/a.drv'").
		u64(4).u64(fieldString).str("/nix/store/a.drv").u64(fieldString).str("").u64(fieldInt).u64(1).u64(fieldInt).u64(1).
		u64(3).
		u64(stderrResult).u64(7).u64(uint64(ResBuildLogLine)).u64(1).u64(fieldString).str("hello").
		u64(stderrNext).str("a log line\n").
		u64(stderrWrite).str("sink data").
		u64(stderrStopActivity).u64(7).
		last().u64(1)
	var got []Event
	c, _ := fakeClient(t, q, WithEvents(func(e Event) { got = append(got, e) }))
	if err := c.BuildPaths(ctxT(t, 5*time.Second), DerivationOutputs("/nix/store/a.drv")); err != nil {
		t.Fatal(err)
	}
	want := []Event{
		{Kind: EventStartActivity, ActivityID: 7, Level: VerbosityInfo, Type: ActBuild, Text: "building '/nix/store/a.drv'",
			Fields: []any{"/nix/store/a.drv", "", uint64(1), uint64(1)}, Parent: 3},
		{Kind: EventResult, ActivityID: 7, ResultType: ResBuildLogLine, Fields: []any{"hello"}},
		{Kind: EventLog, Text: "a log line"},
		{Kind: EventWrite, Text: "sink data"},
		{Kind: EventStopActivity, ActivityID: 7},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d events %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i].Kind != want[i].Kind || got[i].ActivityID != want[i].ActivityID || got[i].Text != want[i].Text ||
			got[i].Type != want[i].Type || got[i].ResultType != want[i].ResultType || got[i].Parent != want[i].Parent ||
			got[i].Level != want[i].Level || !slices.Equal(got[i].Fields, want[i].Fields) {
			t.Errorf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestFakeQueryPathInfo(t *testing.T) {
	const hexHash = "f1ed0dca9b59f1cb45e1bb4e9ca3a10f2d5c2aec7d8e6f1d9bd1e9c5e8a7f6b1"
	q := hello(proto(34)).
		last().u64(1). // valid
		str("/nix/store/d-x.drv").str(hexHash).strs([]string{"/nix/store/a-x"}).
		u64(1700000000).u64(1234).bool(true).strs([]string{"cache:sig"}).str("").
		last().u64(0) // second path: not valid
	c, f := fakeClient(t, q)
	info, err := c.QueryPathInfo(ctxT(t, 5*time.Second), "/nix/store/a-x")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(info.NarHash, "sha256:") || len(info.NarHash) != len("sha256:")+52 {
		t.Errorf("NarHash = %q, want sha256:<52 nixbase32 chars>", info.NarHash)
	}
	if info.Deriver != "/nix/store/d-x.drv" || info.NarSize != 1234 || !info.Ultimate ||
		info.RegistrationTime.Unix() != 1700000000 || !slices.Equal(info.Sigs, []string{"cache:sig"}) {
		t.Errorf("info = %+v", info)
	}
	if _, err := c.QueryPathInfo(ctxT(t, 5*time.Second), "/nix/store/b-y"); !errors.Is(err, ErrInvalidPath) {
		t.Errorf("invalid path: err = %v", err)
	}
	sent := f.clientSent(t)
	if !bytes.Contains(sent, []byte("/nix/store/b-y")) {
		t.Errorf("second request not sent: the client must survive ErrInvalidPath")
	}
}

func TestFakeBadNarHash(t *testing.T) {
	q := hello(proto(34)).last().u64(1).str("").str("nonsense").strs(nil).u64(0).u64(0).bool(false).strs(nil).str("")
	c, _ := fakeClient(t, q)
	if _, err := c.QueryPathInfo(ctxT(t, 5*time.Second), "/nix/store/a-x"); !errors.As(err, new(*ProtocolError)) {
		t.Fatalf("err = %v, want ProtocolError", err)
	}
}

func TestFakeBuildPathsWithResults(t *testing.T) {
	realisation := `{"id":"sha256:abc!out","outPath":"q-out","signatures":[],"dependentRealisations":{}}`
	for _, v := range []ProtocolVersion{proto(34), proto(37), proto(38)} {
		t.Run(v.String(), func(t *testing.T) {
			q := hello(v).last().u64(1).
				str("/nix/store/p-x.drv!out").u64(uint64(BuildBuilt)).str("").
				u64(1).bool(false).u64(1700000000).u64(1700000005)
			if v.Minor() >= verCPUTimes {
				q.u64(1).u64(2500000).u64(0) // cpuUser 2.5 s, cpuSystem unknown
			}
			q.u64(1).str("sha256:abc!out").str(realisation)
			c, f := fakeClient(t, q)
			res, err := c.BuildPathsWithResults(ctxT(t, 5*time.Second), DerivationOutputs("/nix/store/p-x.drv", "out"))
			if err != nil {
				t.Fatal(err)
			}
			if len(res) != 1 {
				t.Fatalf("results = %+v", res)
			}
			r := res[0]
			if r.Path.Path != "/nix/store/p-x.drv" || !slices.Equal(r.Path.Outputs, []string{"out"}) ||
				r.Status != BuildBuilt || r.BuiltOutputs["out"] != "/nix/store/q-out" || r.Err() != nil ||
				r.StopTime.Sub(r.StartTime) != 5*time.Second || r.TimesBuilt != 1 {
				t.Errorf("result = %+v", r)
			}
			if v.Minor() >= verCPUTimes && (r.CPUUser == nil || *r.CPUUser != 2500*time.Millisecond || r.CPUSystem != nil) {
				t.Errorf("cpu times %v %v", r.CPUUser, r.CPUSystem)
			}
			sent := f.clientSent(t)
			if !bytes.Contains(sent, []byte("/nix/store/p-x.drv!out")) {
				t.Errorf("request lacks the derived path: %q", sent)
			}
		})
	}
}

func TestFakeBuildPathsWithResultsUnsupported(t *testing.T) {
	c, _ := fakeClient(t, hello(proto(33)).last().u64(1))
	_, err := c.BuildPathsWithResults(ctxT(t, 5*time.Second), DerivationOutputs("/nix/store/p-x.drv"))
	var ue *UnsupportedError
	if !errors.As(err, &ue) || ue.Need != proto(34) {
		t.Fatalf("err = %v, want UnsupportedError", err)
	}
	// The fallback works on the same connection.
	if err := c.BuildPaths(ctxT(t, 5*time.Second), DerivationOutputs("/nix/store/p-x.drv")); err != nil {
		t.Fatalf("BuildPaths fallback: %v", err)
	}
}

func TestFakeSetOptionsEncoding(t *testing.T) {
	c, f := fakeClient(t, hello(proto(34)).last())
	s := Settings{KeepGoing: true, Verbosity: VerbosityDebug, MaxBuildJobs: 4, MaxSilentTime: 90 * time.Second,
		BuildCores: 2, UseSubstitutes: true, Overrides: map[string]string{"b": "2", "a": "1"}}
	if err := c.SetOptions(ctxT(t, 5*time.Second), s); err != nil {
		t.Fatal(err)
	}
	want := new(request).u64(uint64(OpSetOptions)).u64(0).u64(1).u64(0).u64(6).u64(4).u64(90).u64(1).
		u64(uint64(VerbosityVomit)).u64(0).u64(0).u64(2).u64(1).
		u64(2).str("a").str("1").str("b").str("2")
	sent := f.clientSent(t)
	if req := sent[len(sent)-want.Len():]; !bytes.Equal(req, want.Bytes()) {
		t.Errorf("SetOptions sent\n%x\nwant\n%x", req, want.Bytes())
	}
}

func TestFakeContextDeadline(t *testing.T) {
	c, _ := fakeClient(t, hello(proto(34))) // then silence
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.IsValidPath(ctx, "/nix/store/x")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v", d)
	}
	if _, err := c.IsValidPath(ctxT(t, time.Second), "/nix/store/x"); !errors.Is(err, ErrClosed) {
		t.Errorf("after deadline: %v, want ErrClosed", err)
	}
}

func TestFakeContextCancel(t *testing.T) {
	c, _ := fakeClient(t, hello(proto(34)))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := c.IsValidPath(ctx, "/nix/store/x")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want Canceled", err)
	}
	// Already cancelled: refused before anything is sent.
	if _, err := c.IsValidPath(ctx, "/nix/store/x"); err == nil {
		t.Fatal("call with a cancelled context succeeded")
	}
}

func TestFakeHandshakeDeadline(t *testing.T) {
	f := startFake(t, nil, neverHangUp) // never answers
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := NewClient(ctx, f.client); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
}

func TestFakeClose(t *testing.T) {
	c, _ := fakeClient(t, hello(proto(34)))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.IsValidPath(ctxT(t, time.Second), "/nix/store/x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestDerivedPathEncoding(t *testing.T) {
	const drv = "/nix/store/p-x.drv"
	for _, tc := range []struct {
		p       DerivedPath
		v       ProtocolVersion
		want    string
		wantErr bool
	}{
		{DerivationOutputs(drv), proto(34), drv + "!*", false},
		{DerivationOutputs(drv, "out", "dev"), proto(34), drv + "!out,dev", false},
		{OpaquePath("/nix/store/q-y"), proto(34), "/nix/store/q-y", false},
		{OpaquePath(drv), proto(34), drv, false}, // the .drv file itself
		{DerivationOutputs(drv), proto(29), drv, false},
		{DerivationOutputs(drv, "out"), proto(29), drv + "!out", false},
		{OpaquePath(drv), proto(29), "", true},
		{OpaquePath("/nix/store/q-y"), proto(21), "/nix/store/q-y", false},
		{DerivedPath{Path: drv, Outputs: []string{}}, proto(34), "", true},
		{DerivationOutputs(drv, "a,b"), proto(34), "", true},
		{DerivationOutputs(drv, "out", "*"), proto(34), "", true},
		{OpaquePath(""), proto(34), "", true},
		{OpaquePath("/nix/store/a!b"), proto(34), "", true},
	} {
		got, err := tc.p.encode(tc.v)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("%+v at %s: %q, %v; want %q (error %v)", tc.p, tc.v, got, err, tc.want, tc.wantErr)
		}
		if err == nil {
			if back := parseDerivedPath(got, tc.v); back.String() != tc.p.String() {
				t.Errorf("parse(%q) = %+v, want %+v", got, back, tc.p)
			}
		}
	}
	if _, err := encodeDerivedPaths(nil, proto(34)); err == nil {
		t.Error("no paths: want an error")
	}
}

func TestStripANSI(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                         "plain",
		"\x1b[35;1m/nix/store/x\x1b[0m": "/nix/store/x",
		"a\x1bb":                        "ab",
		"cut \x1b[3":                    "cut ",
	} {
		if got := StripANSI(in); got != want {
			t.Errorf("StripANSI(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSocketPath(t *testing.T) {
	t.Setenv("NIX_DAEMON_SOCKET_PATH", "/tmp/elsewhere")
	if got := SocketPath(); got != "/tmp/elsewhere" {
		t.Errorf("SocketPath() = %q", got)
	}
	t.Setenv("NIX_DAEMON_SOCKET_PATH", "")
	if got := SocketPath(); got != DefaultSocketPath {
		t.Errorf("SocketPath() = %q", got)
	}
	if _, err := Dial(ctxT(t, time.Second), "/nonexistent/nixdaemon.sock"); err == nil {
		t.Error("Dial of a missing socket succeeded")
	}
}
