package nixgate

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	gwSocket := filepath.Join(dir, "socket")
	l, err := net.Listen("unix", gwSocket)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(Config{Socket: e.socket, Host: h, Logger: benchLogger(logFile)}).Serve(ctx, l) }()
	defer func() { cancel(); <-done }()

	path := benchPath(b, e)

	for _, via := range []struct{ name, socket string }{{"raw", e.socket}, {"gateway", gwSocket}} {
		b.Run("conn=open/via="+via.name, func(b *testing.B) {
			c, err := nixdaemon.Dial(ctx, via.socket)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.QueryPathInfo(ctx, path); err != nil {
					b.Fatal(err)
				}
			}
		})
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

func benchLogger(f *sessionlog.File) sessionlog.Logger {
	if os.Getenv("NIXGATE_BENCH_NOLOG") != "" {
		return sessionlog.Discard
	}
	return f
}
