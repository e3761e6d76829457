package nixgate

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// BenchmarkQueryPathInfo compares, in one run, a `nix path-info`-class
// query (QueryPathInfo of a valid path) on the raw daemon socket, through a
// blind proxy (one more hop, nothing parsed: the floor for any gateway),
// and through the gateway with and without its session log (a real file):
// on an open connection, and on a fresh connection per query (handshake
// included, as each nix command pays).
//
// Sub-benchmarks run one after the other, so on a busy machine run the
// binary several times and compare medians, which interleaves the variants:
//
//	go test -c -o /tmp/ng.test ./nixgate
//	for i in $(seq 10); do /tmp/ng.test -test.run '^$' -test.bench QueryPathInfo/conn=open; done > open.txt
//	for i in $(seq 5); do /tmp/ng.test -test.run '^$' -test.bench QueryPathInfo/conn=fresh; done > fresh.txt
//	benchstat -col /via open.txt fresh.txt
//
// Measured so on the 2-core test VM (load average 6–8 from other work),
// Nix 2.8 daemon, protocol 1.34, medians of 10 (fresh: 5):
//
//	                    raw       blind-proxy   gateway          gateway-nolog
//	conn=open          132 µs    165 µs        159 µs (1.20×)   148 µs (1.12×)
//	conn=fresh        33.8 ms                 36.8 ms (1.09×, not significant)
//
// Sequential runs on the same machine ranged from 1.3× to 2.1× on an open
// connection, following the load: the cost is two more thread wake-ups per
// request, which the blind proxy pays too. Against Debian 13's Nix 2.26
// (protocol 1.38, in a debootstrapped root): open 109 µs raw, 192 µs
// gateway (sequential run, load 7); fresh 42.4 ms raw, 44.1 ms gateway.
func BenchmarkQueryPathInfo(b *testing.B) {
	e := live(b)
	h := e.probe(b)
	dir := b.TempDir()
	logFile, err := sessionlog.Open(filepath.Join(dir, "session.log"), "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	serve := func(name string, logger sessionlog.Logger) string {
		socket := filepath.Join(dir, name)
		l, err := net.Listen("unix", socket)
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = New(Config{Socket: e.socket, Host: h, Logger: logger}).Serve(ctx, l)
		}()
		return socket
	}
	gateway := serve("gateway", logFile)
	// The same without the session log, to show what logging costs.
	gatewayNoLog := serve("gateway-nolog", sessionlog.Discard)
	// A blind proxy (bytes copied both ways, nothing parsed): the cost of
	// one more hop alone, the floor for any gateway.
	blind := blindProxy(b, ctx, &wg, filepath.Join(dir, "blind"), e.socket)
	path := benchPath(b, e)

	for _, via := range []struct{ name, socket string }{{"raw", e.socket}, {"blind-proxy", blind}, {"gateway", gateway}, {"gateway-nolog", gatewayNoLog}} {
		b.Run("conn=open/via="+via.name, func(b *testing.B) {
			c, err := nixdaemon.Dial(ctx, via.socket)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			for b.Loop() {
				if _, err := c.QueryPathInfo(ctx, path); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	for _, via := range []struct{ name, socket string }{{"raw", e.socket}, {"gateway", gateway}} {
		b.Run("conn=fresh/via="+via.name, func(b *testing.B) {
			for b.Loop() {
				c, err := nixdaemon.Dial(ctx, via.socket)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.QueryPathInfo(ctx, path); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

// benchPath adds a small file to the store on the raw socket and returns
// its path.
func benchPath(b *testing.B, e liveEnv) string {
	b.Helper()
	file := filepath.Join(b.TempDir(), "nixgate-bench-path")
	if err := os.WriteFile(file, []byte("bench\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(e.tool("nix-store"), "--add", file)
	cmd.Env = append(os.Environ(), "NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH="+e.socket)
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("nix-store --add: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func blindProxy(b *testing.B, ctx context.Context, wg *sync.WaitGroup, socket, upstream string) string {
	l, err := net.Listen("unix", socket)
	if err != nil {
		b.Fatal(err)
	}
	context.AfterFunc(ctx, func() { l.Close() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("unix", upstream)
			if err != nil {
				c.Close()
				continue
			}
			stop := context.AfterFunc(ctx, func() { c.Close(); u.Close() })
			go func() { _, _ = io.Copy(u, c); u.Close(); stop() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return socket
}
