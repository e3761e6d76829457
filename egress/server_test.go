package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/proxy"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// memLog keeps entries for assertions.
type memLog struct {
	mu      sync.Mutex
	entries []sessionlog.Entry
}

func (m *memLog) Log(e sessionlog.Entry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entries = append(m.entries, e)
}

func (m *memLog) all() []sessionlog.Entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]sessionlog.Entry(nil), m.entries...)
}

// find waits briefly for an entry matching fn: an entry is written as
// the decision is made, which can be just after the client has its answer.
func (m *memLog) find(t *testing.T, fn func(sessionlog.Entry) bool) (sessionlog.Entry, bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		for _, e := range m.all() {
			if fn(e) {
				return e, true
			}
		}
		if time.Now().After(deadline) {
			return sessionlog.Entry{}, false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// proxyUnderTest is a Server on a Unix socket (as the supervisor serves
// it) and on a loopback TCP port (what the relay inside a sandbox
// offers; curl needs one).
type proxyUnderTest struct {
	*Server
	sock string
	tcp  string
	log  *memLog
}

func startProxy(t *testing.T, p *Policy, r Resolver, tweak func(*Options)) *proxyUnderTest {
	t.Helper()
	lg := &memLog{}
	opts := Options{Policy: p, Log: lg, Resolver: r}
	if tweak != nil {
		tweak(&opts)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "egress.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, ln := range []net.Listener{ul, tl} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Serve(ln); !errors.Is(err, ErrClosed) {
				t.Errorf("Serve: %v", err)
			}
		}()
	}
	t.Cleanup(func() {
		s.Close()
		wg.Wait()
	})
	return &proxyUnderTest{Server: s, sock: sock, tcp: tl.Addr().String(), log: lg}
}

// origin is a destination server on loopback, reached by the name
// origin.test (the test's resolver) at a port the rules name.
type origin struct {
	*httptest.Server
	port string
}

func startOrigin(t *testing.T, tlsToo bool) *origin {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/headers" {
			for _, k := range []string{"Proxy-Authorization", "Proxy-Connection", "X-Forwarded-For", "Via", "X-Hop", "Connection", "User-Agent"} {
				fmt.Fprintf(w, "%s=%q\n", k, r.Header.Get(k))
			}
			fmt.Fprintf(w, "Host=%q\n", r.Host)
			return
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "hello %s %s %d", r.Method, r.URL.Path, len(body))
	})
	var s *httptest.Server
	if tlsToo {
		s = httptest.NewTLSServer(h)
	} else {
		s = httptest.NewServer(h)
	}
	t.Cleanup(s.Close)
	_, port, _ := net.SplitHostPort(s.Listener.Addr().String())
	return &origin{Server: s, port: port}
}

func loopbackResolver() *fakeResolver {
	return newResolver(map[string][]string{
		"origin.test":    {"127.0.0.1"},
		"ORIGIN.test":    {"127.0.0.1"},
		"evil.test":      {"127.0.0.1"},
		"other.test":     {"127.0.0.1"},
		"intercept.test": {"127.0.0.1"},
		"localhost":      {"127.0.0.1", "::1"},
	})
}

// allowOrigin: the name rule and the address rule a loopback stand-in needs.
func allowOrigin(t *testing.T, port string, extra ...string) *Policy {
	return NewPolicy(Allowlist, mustRules(t, append([]string{"origin.test:" + port, "127.0.0.1:" + port}, extra...)...), nil)
}

// unixClient is a Go HTTP client that reaches the proxy over its Unix socket.
func unixClient(sock string, via string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: via}),
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		DisableKeepAlives: false,
	}, Timeout: 10 * time.Second}
}

func curl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin := testenv.RequireProgram(t, "curl")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append([]string{"-sS", "--noproxy", "", "--max-time", "15"}, args...)...).CombinedOutput()
	return string(out), err
}

func TestCurlHTTPConnectAndSOCKS5(t *testing.T) {
	o := startOrigin(t, false)
	os := startOrigin(t, true)
	p := startProxy(t, NewPolicy(Allowlist, mustRules(t,
		"origin.test:"+o.port, "127.0.0.1:"+o.port, "origin.test:"+os.port, "127.0.0.1:"+os.port), nil), loopbackResolver(), nil)
	target := "http://origin.test:" + o.port + "/x"
	for _, tc := range []struct {
		name string
		args []string
		want string
		op   string
	}{
		{"plain HTTP", []string{"-x", "http://" + p.tcp, target}, "hello GET /x 0", "GET"},
		{"plain HTTP POST", []string{"-x", "http://" + p.tcp, "-d", "abc", target}, "hello POST /x 3", "POST"},
		{"CONNECT", []string{"-p", "-x", "http://" + p.tcp, target}, "hello GET /x 0", "CONNECT"},
		{"CONNECT TLS", []string{"-k", "-x", "http://" + p.tcp, "https://origin.test:" + os.port + "/t"}, "hello GET /t 0", "CONNECT"},
		{"SOCKS5 with names resolved by the proxy", []string{"--socks5-hostname", p.tcp, target}, "hello GET /x 0", "socks5"},
		{"SOCKS5 with an address", []string{"--socks5", p.tcp, "http://127.0.0.1:" + o.port + "/x"}, "hello GET /x 0", "socks5"},
		{"IPv4-mapped address literal named by rule", []string{"-x", "http://" + p.tcp, "http://[::ffff:127.0.0.1]:" + o.port + "/x"}, "hello GET /x 0", "GET"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := curl(t, tc.args...)
			if err != nil || out != tc.want {
				t.Fatalf("curl %v: %v\n%s", tc.args, err, out)
			}
			if _, ok := p.log.find(t, func(e sessionlog.Entry) bool {
				return e.Decision == sessionlog.Allow && e.Op == tc.op && e.Service == "net"
			}); !ok {
				t.Errorf("no allow entry for %s in %+v", tc.op, p.log.all())
			}
		})
	}
}

func TestRefusalNamesHostAndFix(t *testing.T) {
	o := startOrigin(t, false)
	p := startProxy(t, allowOrigin(t, o.port), loopbackResolver(), nil)
	out, err := curl(t, "-i", "-x", "http://"+p.tcp, "http://evil.test:"+o.port+"/")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	fix := `allow = ["evil.test:` + o.port + `"]`
	for _, want := range []string{
		"HTTP/1.1 403 Forbidden",
		"X-Claude-Sandbox-Refused: evil.test:" + o.port + ": evil.test:" + o.port + " is not in the sandbox's network allowlist.",
		"X-Claude-Sandbox-Fix: " + fix + " in claude-sandbox.toml, then run `claude-sandbox trust`",
		"claude-sandbox refused GET evil.test:" + o.port + ": evil.test:" + o.port + " is not in the sandbox's network allowlist. To allow it: " + fix + " in claude-sandbox.toml, then run `claude-sandbox trust`.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal lacks %q:\n%s", want, out)
		}
	}
	// CONNECT: curl shows the status and, with -v, the header.
	out, _ = curl(t, "-v", "-p", "-x", "http://"+p.tcp, "http://evil.test:"+o.port+"/")
	if !strings.Contains(out, "CONNECT tunnel failed, response 403") || !strings.Contains(out, "X-Claude-Sandbox-Fix: "+fix) {
		t.Errorf("CONNECT refusal:\n%s", out)
	}
	e, ok := p.log.find(t, func(e sessionlog.Entry) bool { return e.Decision == sessionlog.Refuse && e.Op == "CONNECT" })
	if !ok || e.Target != "evil.test:"+o.port || e.Fix != fix || e.Rule != RuleNotListed {
		t.Errorf("log entry %+v, want a refusal of evil.test with fix %s", e, fix)
	}
	// SOCKS5: reply 0x02, "connection not allowed by ruleset".
	out, _ = curl(t, "--socks5-hostname", p.tcp, "http://evil.test:"+o.port+"/")
	if !strings.Contains(out, "Can't complete SOCKS5 connection to evil.test. (2)") {
		t.Errorf("curl over SOCKS5 to a refused host: %s", out)
	}
	if got := socksDial(t, p.sock, "evil.test", o.port); got != socksNotAllowed {
		t.Errorf("SOCKS5 reply %#x, want 0x02", got)
	}
	st := p.Stats()
	if st.Refused < 4 || st.Allowed != 0 {
		t.Errorf("stats %+v", st)
	}
}

// socksDial does a SOCKS5 CONNECT by hand and returns the reply code.
func socksDial(t *testing.T, sock, host, port string) byte {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	pn, _ := strconv.Atoi(port)
	req := []byte{5, 1, 0, 5, 1, 0, 3, byte(len(host))}
	req = append(req, host...)
	req = binary.BigEndian.AppendUint16(req, uint16(pn))
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	var reply [12]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		t.Fatalf("SOCKS5 reply: %v", err)
	}
	return reply[3]
}

func TestNameResolvingToLoopbackRefusedUnlessAddressNamed(t *testing.T) {
	o := startOrigin(t, false)
	// Only the name is allowed: its address is loopback.
	p := startProxy(t, NewPolicy(Allowlist, mustRules(t, "origin.test:"+o.port), nil), loopbackResolver(), nil)
	out, _ := curl(t, "-i", "-x", "http://"+p.tcp, "http://origin.test:"+o.port+"/")
	if !strings.Contains(out, "403") || !strings.Contains(out, "origin.test resolves to 127.0.0.1, a loopback address") ||
		!strings.Contains(out, `allow = ["127.0.0.1:`+o.port+`"]`) {
		t.Fatalf("loopback by name:\n%s", out)
	}
	// Open mode too.
	p.SetPolicy(NewPolicy(Open, nil, nil))
	out, _ = curl(t, "-i", "-x", "http://"+p.tcp, "http://origin.test:"+o.port+"/")
	if !strings.Contains(out, "403") || !strings.Contains(out, "loopback") {
		t.Fatalf("open mode, loopback by name:\n%s", out)
	}
	for _, h := range []string{"127.0.0.1", "[::ffff:127.0.0.1]", "localhost"} {
		out, err := curl(t, "-i", "-x", "http://"+p.tcp, "http://"+h+":"+o.port+"/")
		if !strings.Contains(out, "403") {
			t.Errorf("open mode reached %s: %v\n%s", h, err, out)
		}
	}
	// Named by address, it passes.
	p.SetPolicy(NewPolicy(Open, mustRules(t, "127.0.0.1:"+o.port), nil))
	if out, err := curl(t, "-x", "http://"+p.tcp, "http://origin.test:"+o.port+"/"); err != nil || out != "hello GET / 0" {
		t.Fatalf("named by address: %v %s", err, out)
	}
}

// rebinder answers a public address first, then loopback.
type rebinder struct {
	mu sync.Mutex
	n  int
}

func (r *rebinder) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	if r.n%2 == 1 {
		return []netip.Addr{netip.MustParseAddr("93.184.216.34")}, nil
	}
	return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
}

// TestConnectsToTheCheckedAddress: DNS rebinding (a name that answers a
// public address to the check and loopback to a second lookup) cannot
// pass, because there is no second lookup: the proxy dials the address
// it checked, as an address.
func TestConnectsToTheCheckedAddress(t *testing.T) {
	o := startOrigin(t, false)
	var mu sync.Mutex
	var dialed []string
	p := startProxy(t, NewPolicy(Open, nil, nil), &rebinder{}, nil)
	p.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		if addr != "93.184.216.34:80" {
			return nil, fmt.Errorf("dialed %s", addr)
		}
		// The "public" address is played by the loopback origin.
		var d net.Dialer
		return d.DialContext(ctx, network, o.Listener.Addr().String())
	}
	c := unixClient(p.sock, "proxy")
	for i := 0; i < 4; i++ {
		resp, err := c.Get("http://rebind.test/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := 200
		if i%2 == 1 {
			want = 403
		}
		if resp.StatusCode != want {
			t.Errorf("request %d: %d %s", i, resp.StatusCode, body)
		}
		c.CloseIdleConnections()
	}
	mu.Lock()
	defer mu.Unlock()
	for _, a := range dialed {
		if a != "93.184.216.34:80" {
			t.Errorf("dialed %s", a)
		}
	}
	if len(dialed) == 0 {
		t.Error("nothing dialed")
	}
}

func TestGoClientsHTTPConnectSOCKS5(t *testing.T) {
	o := startOrigin(t, false)
	os := startOrigin(t, true)
	p := startProxy(t, NewPolicy(Allowlist, mustRules(t,
		"origin.test:"+o.port, "127.0.0.1:"+o.port, "origin.test:"+os.port, "127.0.0.1:"+os.port), nil), loopbackResolver(), nil)
	c := unixClient(p.sock, "proxy")
	// Keep-alive: several requests on one client connection.
	for i := 0; i < 3; i++ {
		resp, err := c.Get("http://origin.test:" + o.port + "/k")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "hello GET /k 0" {
			t.Fatalf("%s", body)
		}
	}
	if st := p.Stats(); st.Open != 1 {
		t.Errorf("keep-alive: %d client connections open, want 1", st.Open)
	}
	resp, err := c.Get("https://origin.test:" + os.port + "/s")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello GET /s 0" {
		t.Fatalf("CONNECT: %s", body)
	}
	// Hop-by-hop headers are not forwarded, nothing names the client, and
	// an absolute-form request goes where its URL says, whatever its Host
	// header claims.
	raw, err := net.Dial("unix", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(raw, "GET http://origin.test:%s/headers HTTP/1.1\r\nHost: evil.test\r\nProxy-Authorization: Basic c2VjcmV0\r\n"+
		"Proxy-Connection: keep-alive\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n", o.port)
	resp, err = http.ReadResponse(bufio.NewReader(raw), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`Proxy-Authorization=""`, `Proxy-Connection=""`, `X-Forwarded-For=""`, `Via=""`, `X-Hop=""`, `User-Agent=""`, `Host="origin.test:` + o.port + `"`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("origin saw\n%s\nwant %s", body, want)
		}
	}
	// SOCKS5 with golang.org/x/net/proxy, over the Unix socket.
	d, err := proxy.SOCKS5("unix", p.sock, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	sc := &http.Client{Transport: &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext}, Timeout: 10 * time.Second}
	resp, err = sc.Get("http://origin.test:" + o.port + "/socks")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello GET /socks 0" {
		t.Fatalf("SOCKS5: %s", body)
	}
	if _, err := sc.Get("http://evil.test:" + o.port + "/"); err == nil || !strings.Contains(err.Error(), "not allowed by ruleset") {
		t.Errorf("SOCKS5 to a refused host: %v", err)
	}
}

func TestMethodRules(t *testing.T) {
	o := startOrigin(t, false)
	p := startProxy(t, NewPolicy(Allowlist, mustRules(t, "origin.test:"+o.port+" GET,HEAD", "127.0.0.1:"+o.port+" GET,HEAD"), nil), loopbackResolver(), nil)
	if out, err := curl(t, "-x", "http://"+p.tcp, "http://origin.test:"+o.port+"/m"); err != nil || out != "hello GET /m 0" {
		t.Errorf("GET: %v %s", err, out)
	}
	if out, _ := curl(t, "-I", "-x", "http://"+p.tcp, "http://origin.test:"+o.port+"/m"); !strings.Contains(out, "200 OK") {
		t.Errorf("HEAD: %s", out)
	}
	out, _ := curl(t, "-i", "-d", "x", "-x", "http://"+p.tcp, "http://origin.test:"+o.port+"/m")
	if !strings.Contains(out, "403") || !strings.Contains(out, "claude-sandbox refused POST origin.test:"+o.port) {
		t.Errorf("POST:\n%s", out)
	}
	out, _ = curl(t, "-v", "-p", "-x", "http://"+p.tcp, "http://origin.test:"+o.port+"/m")
	if !strings.Contains(out, "403") || !strings.Contains(out, "allowed only for GET, HEAD") {
		t.Errorf("CONNECT to a method-limited host:\n%s", out)
	}
}

func TestInterceptorTakesTunnel(t *testing.T) {
	o := startOrigin(t, false)
	var seen []string
	var mu sync.Mutex
	p := startProxy(t, NewPolicy(Allowlist, mustRules(t,
		"origin.test:"+o.port, "127.0.0.1:"+o.port, "intercept.test:"+o.port+" GET"), nil), loopbackResolver(), func(opts *Options) {
		opts.Intercept = func(tn *Tunnel) TunnelHandler {
			mu.Lock()
			seen = append(seen, tn.Op+" "+tn.Verdict.Target)
			mu.Unlock()
			if !strings.HasPrefix(tn.Verdict.Target, "intercept.test:") {
				return nil
			}
			if tn.AllowsMethod("POST") || !tn.AllowsMethod("GET") {
				t.Errorf("AllowsMethod: POST %v GET %v", tn.AllowsMethod("POST"), tn.AllowsMethod("GET"))
			}
			return func(ctx context.Context, client net.Conn) error {
				// Serve one request and answer ourselves: a stand-in for TLS termination.
				br := bufio.NewReader(client)
				req, err := http.ReadRequest(br)
				if err != nil {
					return err
				}
				msg := "intercepted " + req.Method + " " + req.URL.Path
				_, err = fmt.Fprintf(client, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(msg), msg)
				return err
			}
		}
	})
	out, err := curl(t, "-p", "-x", "http://"+p.tcp, "http://intercept.test:"+o.port+"/i")
	if err != nil || out != "intercepted GET /i" {
		t.Fatalf("intercepted tunnel: %v %s", err, out)
	}
	out, err = curl(t, "-p", "-x", "http://"+p.tcp, "http://origin.test:"+o.port+"/n")
	if err != nil || out != "hello GET /n 0" {
		t.Fatalf("tunnel left to the proxy: %v %s", err, out)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Errorf("interceptor consulted for %v", seen)
	}
}

func TestLearnModeThroughProxy(t *testing.T) {
	o := startOrigin(t, false)
	pol := NewPolicy(Learn, mustRules(t, "127.0.0.1:"+o.port), nil)
	p := startProxy(t, pol, loopbackResolver(), nil)
	for _, args := range [][]string{
		{"-x", "http://" + p.tcp, "http://origin.test:" + o.port + "/a"},
		{"-x", "http://" + p.tcp, "-I", "http://origin.test:" + o.port + "/a"},
		{"-p", "-x", "http://" + p.tcp, "http://other.test:" + o.port + "/b"},
		{"--socks5-hostname", p.tcp, "http://other.test:" + o.port + "/c"},
	} {
		if _, err := curl(t, args...); err != nil {
			t.Fatal(err)
		}
	}
	curl(t, "-x", "http://"+p.tcp, "http://127.0.0.2:9/") // refused: loopback, no rule
	got := pol.Learned()
	var rules []string
	for _, r := range got.Allow {
		rules = append(rules, r.Rule)
	}
	want := []string{"origin.test:" + o.port + " GET,HEAD", "other.test:" + o.port}
	if strings.Join(rules, "|") != strings.Join(want, "|") {
		t.Errorf("learned %v, want %v", rules, want)
	}
	if len(got.Refused) != 1 || got.Refused[0].Rule != "127.0.0.2:9" {
		t.Errorf("refused %+v", got.Refused)
	}
}

func TestHeaderLimitAndHandshakeTimeout(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // runs last, after the proxy's cleanup
	p := startProxy(t, NewPolicy(Open, nil, nil), loopbackResolver(), func(o *Options) {
		o.Timeouts.Handshake = 300 * time.Millisecond
	})
	c, err := net.Dial("unix", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 100<<10))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("100 KiB header: %v %v", resp, err)
	}
	// A client that says nothing is dropped after the handshake limit.
	for _, first := range []string{"", "G", "\x05"} {
		c2, err := net.Dial("unix", p.sock)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c2, first)
		start := time.Now()
		c2.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.Copy(io.Discard, c2)
		if err != nil || time.Since(start) > 3*time.Second {
			t.Errorf("silent client (sent %q) not dropped: %v after %v", first, err, time.Since(start))
		}
		c2.Close()
	}
}

func TestIdleTunnelEnds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	flooded := make(chan time.Time, 1)
	// The destination streams a byte every 100ms for 2s when asked ("s"),
	// and otherwise says nothing.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var b [1]byte
				if _, err := c.Read(b[:]); err != nil || (b[0] != 's' && b[0] != 'f') {
					io.Copy(io.Discard, c)
					return
				}
				if b[0] == 'f' {
					// Flood a client that does not read, until the proxy gives up.
					buf := make([]byte, 64<<10)
					for {
						if _, err := c.Write(buf); err != nil {
							flooded <- time.Now()
							return
						}
					}
				}
				for i := 0; i < 20; i++ {
					time.Sleep(100 * time.Millisecond)
					if _, err := c.Write([]byte{'.'}); err != nil {
						return
					}
				}
				io.Copy(io.Discard, c)
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	p := startProxy(t, allowOrigin(t, port), loopbackResolver(), func(o *Options) { o.Timeouts.Idle = 500 * time.Millisecond })
	// The sandbox's path is TCP (on its own loopback), the other a Unix
	// socket; their tunnels' downloads are copied differently (copyBursts,
	// splice).
	for _, network := range []string{"tcp", "unix"} {
		addr := p.tcp
		if network == "unix" {
			addr = p.sock
		}
		t.Run(network, func(t *testing.T) {
			open := func() net.Conn {
				c, err := net.Dial(network, addr)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(c, "CONNECT origin.test:%s HTTP/1.1\r\nHost: origin.test:%s\r\n\r\n", port, port)
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("CONNECT: %v %v", resp, err)
				}
				return c
			}
			// Quiet both ways: closed after about the idle limit.
			c := open()
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			if _, err := io.Copy(io.Discard, c); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d < 450*time.Millisecond || d > 3*time.Second {
				t.Errorf("idle tunnel ended after %v, want about 500ms", d)
			}
			// One direction busy for 2s (the client silent): kept open
			// past the idle limit, ended when both are quiet.
			c2 := open()
			defer c2.Close()
			c2.Write([]byte{'s'})
			c2.SetReadDeadline(time.Now().Add(5 * time.Second))
			start = time.Now()
			n, _ := io.Copy(io.Discard, c2)
			if n != 20 {
				t.Errorf("streamed %d bytes through a tunnel whose client was silent, want 20 (ended after %v)", n, time.Since(start))
			}
			// A client that has finished sending and stops reading: the proxy's
			// write to it blocks, nothing moves, and the tunnel ends all the same.
			c3 := open()
			defer c3.Close()
			c3.Write([]byte{'f'})
			c3.(interface{ CloseWrite() error }).CloseWrite()
			start = time.Now()
			select {
			case <-flooded:
				if d := time.Since(start); d < 450*time.Millisecond {
					t.Errorf("stalled tunnel ended after %v, before the idle limit", d)
				}
			case <-time.After(5 * time.Second):
				t.Error("a tunnel to a client that stopped reading did not end")
			}
		})
	}
}

// TestCloseLeavesNoGoroutine: connections in every state — keep-alive
// idle, half a request head, a SOCKS5 handshake, an open tunnel, a
// plain request waiting on a slow destination — end when the server
// closes, and so does every goroutine it started.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	slow := make(chan struct{})
	o := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-slow:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, "ok")
	}))
	defer o.Close()
	defer close(slow)
	_, port, _ := net.SplitHostPort(o.Listener.Addr().String())
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	s, err := New(Options{Policy: allowOrigin(t, port), Resolver: loopbackResolver()})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	dial := func(first string) net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, first)
		return c
	}
	var conns []net.Conn
	// Keep-alive idle after one request.
	c := dial("GET http://origin.test:" + port + "/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	conns = append(conns, c)
	conns = append(conns, dial("GET http://origin.test:"+port+"/ HTTP/1.1\r\nHos"))
	conns = append(conns, dial("\x05\x01"))
	tun := dial("CONNECT origin.test:" + port + " HTTP/1.1\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(tun), &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	conns = append(conns, tun)
	conns = append(conns, dial("GET http://origin.test:"+port+"/slow HTTP/1.1\r\nHost: origin.test\r\n\r\n"))
	time.Sleep(100 * time.Millisecond)
	if st := s.Stats(); st.Open != 5 {
		t.Errorf("%d open connections, want 5", st.Open)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrClosed) {
		t.Errorf("Serve after Close: %v", err)
	}
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("a client connection stayed open after Close: %v", err)
		}
		c.Close()
	}
	if st := s.Stats(); st.Open != 0 {
		t.Errorf("%d open connections after Close", st.Open)
	}
	if err := s.Serve(ln); !errors.Is(err, ErrClosed) {
		t.Errorf("Serve after Close: %v", err)
	}
}

func TestUnresolvableNameIsBadGateway(t *testing.T) {
	p := startProxy(t, NewPolicy(Open, nil, nil), loopbackResolver(), nil)
	out, _ := curl(t, "-i", "-x", "http://"+p.tcp, "http://nowhere.test/")
	if !strings.Contains(out, "502 Bad Gateway") || !strings.Contains(out, "nowhere.test does not resolve: no such host") {
		t.Errorf("unresolvable name:\n%s", out)
	}
	if got := socksDial(t, p.sock, "nowhere.test", "80"); got != socksHostUnreachable {
		t.Errorf("SOCKS5 reply %#x, want 0x04 (host unreachable)", got)
	}
	if st := p.Stats(); st.Failed != 2 || st.Refused != 0 {
		t.Errorf("stats %+v: an unknown name is a failure, not a refusal", st)
	}
}

// TestTunnelHalfCloseAndEarlyBytes: bytes a client sends together with
// its CONNECT (before the answer) arrive first; a client that finishes
// sending (half-close) still gets the whole answer; both through the
// kernel-splice path, for a megabyte each way.
func TestTunnelHalfCloseAndEarlyBytes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c) // to the client's half-close
				fmt.Fprintf(c, "got %d\n", n)
				c.Write(make([]byte, 1<<20))
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	p := startProxy(t, allowOrigin(t, port), loopbackResolver(), nil)
	payload := strings.Repeat("x", 1<<20)
	for _, network := range []string{"tcp", "unix"} {
		addr := p.tcp
		if network == "unix" {
			addr = p.sock
		}
		for _, proto := range []string{"CONNECT", "socks5"} {
			c, err := net.Dial(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			var br *bufio.Reader
			if proto == "CONNECT" {
				io.WriteString(c, "CONNECT origin.test:"+port+" HTTP/1.1\r\n\r\nEARLY"+payload)
				br = bufio.NewReader(c)
				resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
				if err != nil || resp.StatusCode != 200 {
					t.Fatal(resp, err)
				}
			} else {
				pn, _ := strconv.Atoi(port)
				req := append([]byte{5, 1, 0, 5, 1, 0, 3, 11}, "origin.test"...)
				req = binary.BigEndian.AppendUint16(req, uint16(pn))
				c.Write(req)
				var reply [12]byte
				if _, err := io.ReadFull(c, reply[:]); err != nil || reply[3] != 0 {
					t.Fatal(reply, err)
				}
				io.WriteString(c, "EARLY"+payload)
				br = bufio.NewReader(c)
			}
			c.(interface{ CloseWrite() error }).CloseWrite()
			line, err := br.ReadString('\n')
			if want := fmt.Sprintf("got %d\n", len(payload)+5); err != nil || line != want {
				t.Errorf("%s over %s: destination says %q (%v), want %q", proto, network, line, err, want)
			}
			n, err := io.Copy(io.Discard, br)
			if err != nil || n != 1<<20 {
				t.Errorf("%s over %s: %d bytes after the half-close (%v), want 1 MiB", proto, network, n, err)
			}
			c.Close()
		}
	}
}

// A tunnel's download borrows a large buffer only for a bulk burst, and
// gives it back once the source is quiet; at the source's end the copy
// reports everything moved and no error.
func TestCopyBurstsLendsBufferOnlyWhileBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	far, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer far.Close()
	near, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer near.Close()
	buffers := newBufferPool()
	var got atomic.Int64
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := copyBursts(writerFunc(func(p []byte) (int, error) { got.Add(int64(len(p))); return len(p), nil }), near, buffers)
		done <- result{n, err}
	}()
	// A small message is read without a buffer from the pool.
	if _, err := far.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for got.Load() < 5 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if got.Load() != 5 || len(buffers) != 0 {
		t.Fatalf("after a small message: copied %d of 5 bytes, %d buffers in the pool (want none lent)", got.Load(), len(buffers))
	}
	const size = 3 << 20
	if _, err := far.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for (got.Load() < 5+size || len(buffers) != 1) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got.Load() != 5+size || len(buffers) != 1 {
		t.Fatalf("copied %d of %d bytes; %d buffers back in the pool, want 1", got.Load(), 5+size, len(buffers))
	}
	far.Close()
	select {
	case r := <-done:
		if r.n != 5+size || r.err != nil {
			t.Errorf("copyBursts = %d, %v; want %d, nil", r.n, r.err, 5+size)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("copyBursts did not return at the source's end")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
