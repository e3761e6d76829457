package nixgate

import (
	"context"
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
// query (QueryPathInfo of a valid path) on the raw daemon socket and
// through the gateway (logging every decision to a real session log
// file): on an open connection, and on a fresh connection per query
// (handshake included, as each nix command does).
//
//	go test ./nixgate -run '^$' -bench QueryPathInfo -count 6 | benchstat -col /via -
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
	path := benchPath(b, e)

	for _, via := range []struct{ name, socket string }{{"raw", e.socket}, {"gateway", gateway}, {"gateway-nolog", gatewayNoLog}} {
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
