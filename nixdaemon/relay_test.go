package nixdaemon

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/wire"
)

// Relay tests against a scripted daemon and a scripted client, for the
// paths the live tests cannot reach with a 1.34+ daemon: the STDERR_READ
// tunnel of AddToStoreNar (1.21–1.22), the unframed NAR of AddToStore
// (before 1.25), a refused framed body, and the string error format.

type peer struct {
	t    *testing.T
	conn net.Conn
}

func (p peer) words(ns ...uint64) {
	p.t.Helper()
	var b bytes.Buffer
	for _, n := range ns {
		_ = wire.WriteUint64(&b, n)
	}
	p.send(b.Bytes())
}

func (p peer) send(b []byte) {
	p.t.Helper()
	if _, err := p.conn.Write(b); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

func (p peer) word() uint64 {
	p.t.Helper()
	n, err := wire.ReadUint64(p.conn)
	if err != nil {
		p.t.Fatalf("read: %v", err)
	}
	return n
}

func (p peer) str() string {
	p.t.Helper()
	s, err := wire.ReadString(p.conn, 1<<20)
	if err != nil {
		p.t.Fatalf("read string: %v", err)
	}
	return s
}

func (p peer) expect(want []byte) {
	p.t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(p.conn, got); err != nil {
		p.t.Fatalf("read %d bytes: %v", len(want), err)
	}
	if !bytes.Equal(got, want) {
		p.t.Fatalf("got  %x\nwant %x", got, want)
	}
}

// relayPair starts a relay between a fresh client connection and a fresh
// daemon connection, both returned as peers.
func relayPair(t *testing.T, decide func(context.Context, *Request, *Client) Verdict) (client, daemon peer) {
	t.Helper()
	dir := t.TempDir()
	lc, err := net.Listen("unix", filepath.Join(dir, "gw"))
	if err != nil {
		t.Fatal(err)
	}
	ld, err := net.Listen("unix", filepath.Join(dir, "daemon"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	done := make(chan error, 1)
	go func() {
		conn, err := lc.Accept()
		if err != nil {
			done <- err
			return
		}
		done <- Relay(ctx, conn, RelayConfig{
			Dial:   func(ctx context.Context) (net.Conn, error) { return net.Dial("unix", filepath.Join(dir, "daemon")) },
			Decide: decide,
			Trust:  TrustNotTrusted,
		})
	}()
	cc, err := net.Dial("unix", filepath.Join(dir, "gw"))
	if err != nil {
		t.Fatal(err)
	}
	_ = cc.SetDeadline(time.Now().Add(20 * time.Second))
	client = peer{t, cc}
	client.words(workerMagic1)
	dc, err := ld.Accept()
	if err != nil {
		t.Fatal(err)
	}
	_ = dc.SetDeadline(time.Now().Add(20 * time.Second))
	daemon = peer{t, dc}
	t.Cleanup(func() {
		cc.Close()
		dc.Close()
		cancel()
		<-done
		lc.Close()
		ld.Close()
	})
	return client, daemon
}

// handshake runs both sides' handshakes at version v (daemon offers v,
// client asks for v).
func handshake(client, daemon peer, v ProtocolVersion) {
	if m := daemon.word(); m != workerMagic1 {
		daemon.t.Fatalf("daemon got magic %#x", m)
	}
	daemon.words(workerMagic2, uint64(v))
	if m := client.word(); m != workerMagic2 {
		client.t.Fatalf("client got magic %#x", m)
	}
	if got := client.word(); got != uint64(v) {
		client.t.Fatalf("relay offered %#x to the client, want %#x", got, uint64(v))
	}
	client.words(uint64(v))
	if v.Minor() >= 38 {
		client.send(new(request).strs([]string{"some-client-feature"}).Bytes())
	}
	client.words(1, 7, 0) // CPU affinity set (7); reserveSpace
	if got := daemon.word(); got != uint64(v) {
		daemon.t.Fatalf("relay asked the daemon for %#x, want %#x", got, uint64(v))
	}
	if v.Minor() >= 38 {
		// The relay offers no feature to either side.
		daemon.expect(new(request).strs(nil).Bytes())
		daemon.send(new(request).strs([]string{"realisation-with-path-not-hash"}).Bytes())
		if n := client.word(); n != 0 {
			client.t.Fatalf("relay offered the client %d features", n)
		}
	}
	daemon.expect(new(request).u64(0).u64(0).Bytes())
	if v.Minor() >= 33 {
		daemon.send(new(request).str("2.99").Bytes())
	}
	if v.Minor() >= 35 {
		daemon.words(uint64(TrustTrusted))
	}
	daemon.words(stderrNext)
	daemon.send(new(request).str("startup message\n").Bytes())
	daemon.words(stderrLast)
	if v.Minor() >= 33 {
		if got := client.str(); got != "2.99" {
			client.t.Fatalf("client got Nix version %q", got)
		}
	}
	if v.Minor() >= 35 {
		if got := client.word(); got != uint64(TrustNotTrusted) {
			client.t.Fatalf("client told trust %d, want not trusted", got)
		}
	}
	if m := client.word(); m != stderrNext || client.str() != "startup message\n" || client.word() != stderrLast {
		client.t.Fatal("startup messages not relayed")
	}
}

func allowAll(_ context.Context, q *Request, _ *Client) Verdict {
	if q.Info != nil {
		q.Info.Ultimate = false
	}
	return Verdict{}
}

func TestRelayTunnelledAddToStoreNar(t *testing.T) {
	v := proto(22)
	client, daemon := relayPair(t, allowAll)
	handshake(client, daemon, v)

	nar := narSample()
	const p = "/nix/store/00000000000000000000000000000000-x"
	head := new(request).u64(uint64(OpAddToStoreNar)).str(p).str("").str("sha256:00").strs(nil).
		u64(1234).u64(uint64(len(nar))).u64(1).strs([]string{"k:sig"}).str("").u64(0).u64(0)
	client.send(head.Bytes())
	// Forwarded with ultimate cleared and the registration time zeroed.
	daemon.expect(new(request).u64(uint64(OpAddToStoreNar)).str(p).str("").str("sha256:00").strs(nil).
		u64(0).u64(uint64(len(nar))).u64(0).strs([]string{"k:sig"}).str("").u64(0).u64(0).Bytes())

	// The daemon pulls the NAR in two reads; the relay fetches each from
	// the client.
	half := uint64(len(nar) / 2)
	for _, chunk := range [][]byte{nar[:half], nar[half:]} {
		daemon.words(stderrRead, uint64(len(chunk)))
		if m, n := client.word(), client.word(); m != stderrRead || n != uint64(len(chunk)) {
			t.Fatalf("client got %#x %d, want STDERR_READ %d", m, n, len(chunk))
		}
		client.send(new(request).str(string(chunk)).Bytes())
		if got := daemon.str(); got != string(chunk) {
			t.Fatalf("daemon got %q", got)
		}
	}
	daemon.words(stderrLast)
	if m := client.word(); m != stderrLast {
		t.Fatalf("client got %#x, want STDERR_LAST", m)
	}
}

func TestRelayUnframedNARAndStringErrors(t *testing.T) {
	v := proto(24)
	var seen []string
	client, daemon := relayPair(t, func(ctx context.Context, q *Request, up *Client) Verdict {
		seen = append(seen, q.Op.String()+" "+q.Describe())
		if q.Op == OpAddBuildLog {
			return Verdict{Refusal: "no logs from here"}
		}
		return Verdict{}
	})
	handshake(client, daemon, v)

	// AddToStore before 1.25: the NAR follows the header, unframed.
	nar := narSample()
	req := append(new(request).u64(uint64(OpAddToStore)).str("x").u64(1).u64(1).str("sha256").Bytes(), nar...)
	client.send(req)
	daemon.expect(req)
	daemon.words(stderrNext)
	daemon.send(new(request).str("adding\n").Bytes())
	daemon.words(stderrLast)
	daemon.send(new(request).str("/nix/store/11111111111111111111111111111111-x").Bytes())
	if client.word() != stderrNext || client.str() != "adding\n" || client.word() != stderrLast ||
		client.str() != "/nix/store/11111111111111111111111111111111-x" {
		t.Fatal("AddToStore's answer not relayed")
	}

	// A refused framed body: error first (string format before 1.26),
	// frames drained, nothing reaches the daemon, the connection goes on.
	client.send(new(request).u64(uint64(OpAddBuildLog)).str("/nix/store/a.drv").u64(3).Bytes())
	client.send([]byte("abc"))
	client.words(0)
	if m := client.word(); m != stderrError {
		t.Fatalf("client got %#x, want STDERR_ERROR", m)
	}
	if msg, status := client.str(), client.word(); msg != "no logs from here" || status != 1 {
		t.Fatalf("error %q status %d", msg, status)
	}
	const p = "/nix/store/00000000000000000000000000000000-x"
	client.send(new(request).u64(uint64(OpIsValidPath)).str(p).Bytes())
	daemon.expect(new(request).u64(uint64(OpIsValidPath)).str(p).Bytes())
	daemon.words(stderrLast, 1)
	if client.word() != stderrLast || client.word() != 1 {
		t.Fatal("IsValidPath after a refusal not relayed")
	}
	if want := "AddToStore x|AddBuildLog /nix/store/a.drv|IsValidPath " + p; strings.Join(seen, "|") != want {
		t.Errorf("decisions %q, want %q", strings.Join(seen, "|"), want)
	}
}

// A client that hangs up while the daemon works makes the relay hang up on
// the daemon, so the daemon stops the work.
func TestRelayClientHangupReachesDaemon(t *testing.T) {
	client, daemon := relayPair(t, allowAll)
	handshake(client, daemon, proto(35))
	client.send(new(request).u64(uint64(OpBuildPaths)).strs([]string{"/nix/store/a.drv!out"}).u64(0).Bytes())
	daemon.expect(new(request).u64(uint64(OpBuildPaths)).strs([]string{"/nix/store/a.drv!out"}).u64(0).Bytes())
	client.conn.Close()
	if _, err := daemon.conn.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("daemon read %v, want EOF after the client hung up", err)
	}
}

// At 1.38: the feature exchange, and a BuildPathsWithResults reply with
// 1.37's CPU times and 1.28's built outputs, relayed byte for byte.
func TestRelayProtocol138(t *testing.T) {
	v := proto(38)
	client, daemon := relayPair(t, allowAll)
	handshake(client, daemon, v)
	const drv = "/nix/store/00000000000000000000000000000000-x.drv"
	req := new(request).u64(uint64(OpBuildPathsWithResults)).strs([]string{drv + "!out"}).u64(0).Bytes()
	client.send(req)
	daemon.expect(req)
	reply := new(request).u64(stderrStartActivity).u64(7).u64(uint64(VerbosityInfo)).u64(uint64(ActBuild)).str("building").
		u64(2).u64(fieldString).str(drv).u64(fieldInt).u64(1).u64(0).
		u64(stderrResult).u64(7).u64(uint64(ResBuildLogLine)).u64(1).u64(fieldString).str("hello").
		u64(stderrStopActivity).u64(7).
		u64(stderrLast).
		u64(1).str(drv + "!out").        // one KeyedBuildResult
		u64(0).str("").                  // status built, no error
		u64(1).u64(0).u64(100).u64(200). // timesBuilt, isNonDeterministic, start, stop
		u64(1).u64(1500).u64(0).         // cpuUser 1500µs, cpuSystem none
		u64(1).str("sha256:abc!out").str(`{"id":"sha256:abc!out","outPath":"11111111111111111111111111111111-x","signatures":[],"dependentRealisations":{}}`).
		Bytes()
	daemon.send(reply)
	client.expect(reply)

	// The next request still lines up.
	next := new(request).u64(uint64(OpIsValidPath)).str(drv).Bytes()
	client.send(next)
	daemon.expect(next)
}

// A hostile client announcing a huge string gets an error and the end of
// the connection; nothing reaches the daemon and nothing is allocated for
// the announced length.
func TestRelayHostileLengths(t *testing.T) {
	for name, req := range map[string][]byte{
		"path of 1 TiB":        new(request).u64(uint64(OpIsValidPath)).u64(1 << 40).Bytes(),
		"2^60 targets":         new(request).u64(uint64(OpBuildPaths)).u64(1 << 60).Bytes(),
		"overrides of 1 GiB":   new(request).u64(uint64(OpSetOptions)).u64(0).u64(0).u64(0).u64(0).u64(0).u64(0).u64(0).u64(0).u64(0).u64(0).u64(0).u64(0).u64(1).u64(1 << 30).Bytes(),
		"a frame of 1 TiB":     new(request).u64(uint64(OpAddMultipleToStore)).u64(0).u64(0).u64(1 << 40).Bytes(),
		"a NAR token of 1 GiB": append(new(request).u64(uint64(OpAddToStore)).str("x").u64(1).u64(1).str("sha256").Bytes(), new(request).u64(1<<30).Bytes()...),
	} {
		t.Run(name, func(t *testing.T) {
			v := proto(34)
			if strings.Contains(name, "NAR") {
				v = proto(24)
			}
			client, daemon := relayPair(t, allowAll)
			handshake(client, daemon, v)
			client.send(req)
			if strings.Contains(name, "frame") || strings.Contains(name, "NAR") {
				// The header was allowed and forwarded; the body then
				// breaks the stream, and the relay hangs up on both.
				buf := make([]byte, 4096)
				for {
					if _, err := daemon.conn.Read(buf); err != nil {
						break
					}
				}
			} else {
				if m := client.word(); m != stderrError {
					t.Fatalf("client got %#x, want STDERR_ERROR", m)
				}
				if _, err := daemon.conn.Read(make([]byte, 1)); err != io.EOF {
					t.Errorf("daemon read %v, want EOF (nothing forwarded)", err)
				}
			}
			if _, err := io.ReadAll(client.conn); err != nil {
				t.Errorf("client connection not closed cleanly: %v", err)
			}
		})
	}
}
