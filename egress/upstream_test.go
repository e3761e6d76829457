package egress

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// recordingListener keeps the first bytes each accepted connection sends,
// so a test can see what reached the upstream proxy.
type recordingListener struct {
	net.Listener
	mu   sync.Mutex
	seen []*strings.Builder
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	b := &strings.Builder{}
	l.mu.Lock()
	l.seen = append(l.seen, b)
	l.mu.Unlock()
	return &recordingConn{Conn: c, b: b, mu: &l.mu}, nil
}

func (l *recordingListener) heads() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var all []string
	for _, b := range l.seen {
		all = append(all, b.String())
	}
	return strings.Join(all, "\n---\n")
}

type recordingConn struct {
	net.Conn
	b  *strings.Builder
	mu *sync.Mutex
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	if c.b.Len() < 4096 {
		c.b.Write(p[:n])
	}
	c.mu.Unlock()
	return n, err
}

// startUpstream runs a second egress proxy on loopback TCP, standing in
// for a corporate proxy: it resolves names the first cannot.
func startUpstream(t *testing.T, p *Policy, r Resolver) (*Server, *recordingListener, *memLog) {
	t.Helper()
	lg := &memLog{}
	s, err := New(Options{Policy: p, Resolver: r, Log: lg})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := &recordingListener{Listener: ln}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(rl) }()
	t.Cleanup(func() { s.Close(); <-done })
	return s, rl, lg
}

func TestUpstreamChaining(t *testing.T) {
	o := startOrigin(t, false)
	// The corporate proxy knows corp.test; this host does not.
	upstreamDNS := newResolver(map[string][]string{"origin.test": {"127.0.0.1"}, "corp.test": {"127.0.0.1"}, "other.test": {"127.0.0.1"}})
	_, rec, upLog := startUpstream(t, NewPolicy(Allowlist, mustRules(t,
		"origin.test:"+o.port, "corp.test:"+o.port, "127.0.0.1:"+o.port), nil), upstreamDNS)
	upURL := "http://alice:s3cret@" + rec.Addr().String()
	up, err := NewUpstream(upURL, upURL, "")
	if err != nil {
		t.Fatal(err)
	}
	localDNS := newResolver(map[string][]string{"origin.test": {"127.0.0.1"}, "other.test": {"93.184.216.34"}, "rebind.test": {"127.0.0.1"}})
	p := startProxy(t, NewPolicy(Allowlist, mustRules(t,
		"origin.test:"+o.port, "127.0.0.1:"+o.port, "corp.test:"+o.port), nil),
		localDNS, func(opts *Options) { opts.Upstream = up })

	for _, tc := range []struct{ name, op string }{{"CONNECT", "CONNECT"}, {"SOCKS5", "socks5"}, {"plain HTTP", "GET"}} {
		args := map[string][]string{
			"CONNECT":    {"-p", "-x", "http://" + p.tcp},
			"SOCKS5":     {"--socks5-hostname", p.tcp},
			"plain HTTP": {"-x", "http://" + p.tcp},
		}[tc.name]
		for _, host := range []string{"origin.test", "corp.test"} {
			out, err := curl(t, append(args, "http://"+host+":"+o.port+"/u")...)
			if err != nil || out != "hello GET /u 0" {
				t.Errorf("%s to %s through the upstream proxy: %v %s", tc.name, host, err, out)
			}
		}
		e, ok := p.log.find(t, func(e sessionlog.Entry) bool {
			return e.Op == tc.op && e.Target == "corp.test:"+o.port && e.Decision == sessionlog.Allow
		})
		if !ok || !strings.Contains(e.Reason, "does not resolve here; the upstream proxy resolves it") ||
			!strings.Contains(e.Reason, "Through the upstream proxy http://alice@") || strings.Contains(e.Reason, "s3cret") {
			t.Errorf("%s: log entry %+v", tc.name, e)
		}
	}
	heads := rec.heads()
	for _, want := range []string{
		"CONNECT origin.test:" + o.port + " HTTP/1.1\r\nHost: origin.test:" + o.port + "\r\nProxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n",
		"CONNECT corp.test:" + o.port + " HTTP/1.1",
		"GET http://corp.test:" + o.port + "/u HTTP/1.1",
	} {
		if !strings.Contains(heads, want) {
			t.Errorf("the upstream proxy did not see %q; it saw:\n%s", want, heads)
		}
	}
	if _, ok := upLog.find(t, func(e sessionlog.Entry) bool { return e.Op == "GET" && e.Decision == sessionlog.Allow }); !ok {
		t.Error("plain HTTP did not go through the upstream proxy")
	}

	// The local check still applies: a name that resolves to loopback
	// here, and no address rule, never reaches the upstream proxy.
	p.SetPolicy(NewPolicy(Allowlist, mustRules(t, "rebind.test:"+o.port, "other.test:"+o.port), nil))
	out, _ := curl(t, "-i", "-p", "-x", "http://"+p.tcp, "http://rebind.test:"+o.port+"/")
	if !strings.Contains(out, "403") || !strings.Contains(out, "loopback") {
		t.Errorf("a loopback name through the upstream proxy:\n%s", out)
	}
	if strings.Contains(rec.heads(), "rebind.test") {
		t.Errorf("a refused destination reached the upstream proxy:\n%s", rec.heads())
	}

	// The upstream proxy refuses other.test: a 502 that names it and its
	// answer (not the password), SOCKS5 0x02, and a log entry.
	out, _ = curl(t, "-i", "-p", "-x", "http://"+p.tcp, "http://other.test:"+o.port+"/")
	want := "the upstream proxy http://alice@" + rec.Addr().String() + " answered CONNECT other.test:" + o.port + " with 403 Forbidden"
	if !strings.Contains(out, "502 Bad Gateway") || !strings.Contains(out, want) || strings.Contains(out, "s3cret") {
		t.Errorf("upstream refusal:\n%s\nwant %q", out, want)
	}
	if got := socksDial(t, p.sock, "other.test", o.port); got != socksNotAllowed {
		t.Errorf("SOCKS5 reply %#x for an upstream refusal, want 0x02", got)
	}
	if e, ok := p.log.find(t, func(e sessionlog.Entry) bool {
		return e.Decision == sessionlog.Note && e.Target == "other.test:"+o.port
	}); !ok || !strings.Contains(e.Reason, want) {
		t.Errorf("upstream refusal log: %+v", e)
	}
	if st := p.Stats(); st.Failed < 2 {
		t.Errorf("stats %+v: upstream refusals are failures", st)
	}
}

func TestUpstreamNoProxyAndAuthRequired(t *testing.T) {
	o := startOrigin(t, false)
	// An upstream proxy that wants credentials it is not given.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hits := 0
	var mu sync.Mutex
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		w.Header().Set("Proxy-Authenticate", `Basic realm="corp"`)
		w.WriteHeader(http.StatusProxyAuthRequired)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	up, err := NewUpstream("", "http://"+ln.Addr().String(), "origin.test,.internal.test")
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, NewPolicy(Allowlist, mustRules(t,
		"origin.test:"+o.port, "other.test:"+o.port, "127.0.0.1:"+o.port), nil), loopbackResolver(), func(opts *Options) { opts.Upstream = up })
	// NO_PROXY: straight to the destination.
	if out, err := curl(t, "-p", "-x", "http://"+p.tcp, "http://origin.test:"+o.port+"/np"); err != nil || out != "hello GET /np 0" {
		t.Errorf("NO_PROXY destination: %v %s", err, out)
	}
	// HTTP_PROXY unset: plain HTTP goes direct too, as curl on the host would.
	if out, err := curl(t, "-x", "http://"+p.tcp, "http://other.test:"+o.port+"/direct"); err != nil || out != "hello GET /direct 0" {
		t.Errorf("plain HTTP without HTTP_PROXY: %v %s", err, out)
	}
	mu.Lock()
	if hits != 0 {
		t.Errorf("the upstream proxy was used %d times for direct destinations", hits)
	}
	mu.Unlock()
	out, _ := curl(t, "-i", "-p", "-x", "http://"+p.tcp, "http://other.test:"+o.port+"/")
	if !strings.Contains(out, "407 Proxy Authentication Required") || !strings.Contains(out, "it wants credentials") {
		t.Errorf("407 from the upstream proxy:\n%s", out)
	}
}

func TestUpstreamFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if u, err := UpstreamFromEnv(env(nil)); u != nil || err != nil {
		t.Errorf("no proxy variables: %v %v", u, err)
	}
	u, err := UpstreamFromEnv(env(map[string]string{"https_proxy": "http://bob:pw@proxy.corp:3128", "NO_PROXY": "corp.example"}))
	if err != nil || u == nil {
		t.Fatal(u, err)
	}
	if got := u.forTunnel("github.com:22"); got == nil || got.Host != "proxy.corp:3128" {
		t.Errorf("tunnel route: %v", got)
	}
	if got := u.forTunnel("git.corp.example:443"); got != nil {
		t.Errorf("NO_PROXY domain routed through %v", got)
	}
	if got := u.forHTTP("example.com:80"); got != nil {
		t.Errorf("plain HTTP without HTTP_PROXY routed through %v", got)
	}
	if s := u.String(); strings.Contains(s, "pw") || !strings.Contains(s, "bob@proxy.corp:3128") {
		t.Errorf("String() = %q: must name the proxy, never the password", s)
	}
	if _, err := UpstreamFromEnv(env(map[string]string{"HTTPS_PROXY": "socks5://proxy:1080"})); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("socks5 upstream: %v", err)
	}
	if u, err := UpstreamFromEnv(env(map[string]string{"HTTPS_PROXY": "proxy.corp:3128"})); err != nil || u.forTunnel("example.com:443").Host != "proxy.corp:3128" {
		t.Errorf("bare host:port: %v %v", u, err)
	}
}

// TestUpstreamEarlyBytes: a server that speaks first (SSH's banner) may
// have sent bytes the upstream proxy passed on together with its answer;
// they reach the client.
func TestUpstreamEarlyBytes(t *testing.T) {
	banner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer banner.Close()
	// A fake upstream proxy that sends its 200 and the banner in one write.
	go func() {
		c, err := banner.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\nSSH-2.0-test\r\n")
		io.Copy(io.Discard, c)
	}()
	up, _ := NewUpstream("", "http://"+banner.Addr().String(), "")
	p := startProxy(t, NewPolicy(Allowlist, mustRules(t, "github.test:22"), nil),
		newResolver(map[string][]string{"github.test": {"140.82.121.4"}}), func(opts *Options) { opts.Upstream = up })
	c, err := net.Dial("unix", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "CONNECT github.test:22 HTTP/1.1\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatal(resp, err)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != "SSH-2.0-test\r\n" {
		t.Errorf("banner %q, %v", line, err)
	}
}
