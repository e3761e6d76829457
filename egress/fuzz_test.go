package egress

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// FuzzParseRule: no input panics, and a rule's normal form parses back
// to itself.
func FuzzParseRule(f *testing.F) {
	for _, s := range []string{
		"api.anthropic.com", "*.github.com:443", "registry.npmjs.org GET,HEAD", "10.0.0.5:5432",
		"192.168.1.0/24:8080", "[::1]:3000", "fd00::/8", "bücher.example", "example.com:80,8000-8999",
		"*.", "*", "evil.com.", "0x7f.1", "127.1", "[::ffff:127.0.0.1]", "1.2.3.4.nip.io", "example.com:*",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRule(s)
		if err != nil {
			var re *RuleError
			if !errors.As(err, &re) {
				t.Fatalf("ParseRule(%q): %T %v, want a *RuleError", s, err, err)
			}
			return
		}
		again, err := ParseRule(r.String())
		if err != nil {
			t.Fatalf("ParseRule(%q) = %q, which does not parse: %v", s, r.String(), err)
		}
		if again.String() != r.String() {
			t.Fatalf("normal form of %q: %q, then %q", s, r.String(), again.String())
		}
	})
}

// fakeDestination stands in for every destination in the fuzz test: it
// reads what arrives for a moment, answers with a small HTTP response
// and closes. Nothing leaves the process.
func fakeDestination(ctx context.Context, _, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	go func() {
		defer server.Close()
		server.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		io.Copy(io.Discard, io.LimitReader(server, 1<<20))
		server.SetWriteDeadline(time.Now().Add(time.Second))
		io.WriteString(server, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
	}()
	return client, nil
}

// FuzzProxyConnection sends arbitrary bytes to the proxy as a client
// would (HTTP, SOCKS5, anything) and half-closes: the proxy must answer
// or close promptly, and never panic or hang.
func FuzzProxyConnection(f *testing.F) {
	for _, s := range []string{
		"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n",
		"GET http://[::ffff:127.0.0.1]/ HTTP/1.1\r\n\r\n",
		"POST http://origin.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST http://origin.test/ HTTP/1.1\r\nContent-Length: 99999999\r\n\r\nabc",
		"CONNECT origin.test:443 HTTP/1.1\r\n\r\n\x16\x03\x01",
		"CONNECT evil.test:443 HTTP/1.1\r\n\r\n",
		"CONNECT [::1]:22 HTTP/1.0\r\n\r\n",
		"CONNECT origin.test HTTP/1.1\r\n\r\n",
		"GET ftp://origin.test/ HTTP/1.1\r\n\r\n",
		"\x05\x01\x00\x05\x01\x00\x03\x0borigin.test\x01\xbb",
		"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x16",
		"\x05\x01\x00\x05\x01\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x16",
		"\x05\x01\x00\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00",
		"\x05\x01\x02",
		"\x05\x00",
		"\x04\x01\x00\x16\x7f\x00\x00\x01user\x00",
		"\x16\x03\x01\x02\x00",
		"",
	} {
		f.Add([]byte(s))
	}
	// One server for the whole run (each fuzzing process sets up its own).
	p := NewPolicy(Open, mustRules(f, "origin.test:443,80,22", "127.0.0.1:22"), mustRules(f, "evil.test"))
	s, err := New(Options{Policy: p, Resolver: newResolver(map[string][]string{
		"origin.test": {"93.184.216.34"}, "evil.test": {"93.184.216.35"},
	}), Timeouts: Timeouts{Handshake: time.Second, Idle: time.Second}})
	if err != nil {
		f.Fatal(err)
	}
	s.dial = fakeDestination
	sock := filepath.Join(f.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	go s.Serve(ln)
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(data); err != nil {
			return // the proxy may close on a bad first byte before all is written
		}
		c.(*net.UnixConn).CloseWrite()
		if _, err := io.Copy(io.Discard, io.LimitReader(c, 1<<20)); isTimeout(err) {
			t.Fatalf("the proxy neither answered nor closed within 10s for %q", data)
		}
	})
}
