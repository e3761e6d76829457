package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/egress"
	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/secrets"
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

func (m *memLog) text() string {
	var b strings.Builder
	for _, e := range m.all() {
		fmt.Fprintf(&b, "%+v\n", e)
	}
	return b.String()
}

// origin is a real TLS server on loopback, standing in for a host a
// secret is bound to. It records what it received and echoes it back
// (so a reflected value shows whether masking works).
type origin struct {
	*httptest.Server
	addr string // 127.0.0.1:PORT
	mu   sync.Mutex
	seen []seenRequest
}

type seenRequest struct {
	Method, Path, Auth, Token, Body string
	TE                              []string
}

func startOrigin(t testing.TB, handler http.Handler) *origin {
	t.Helper()
	o := &origin{}
	mux := http.NewServeMux()
	if handler != nil {
		mux.Handle("/custom/", handler)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sr := seenRequest{Method: r.Method, Path: r.URL.Path, Auth: r.Header.Get("Authorization"), Token: r.Header.Get("X-Token"), Body: string(body), TE: r.TransferEncoding}
		o.mu.Lock()
		o.seen = append(o.seen, sr)
		o.mu.Unlock()
		w.Header().Set("X-Echo-Auth", sr.Auth)
		fmt.Fprintf(w, "method=%s\nauth=%s\ntoken=%s\nbody=%s\n", sr.Method, sr.Auth, sr.Token, sr.Body)
	})
	return serveOrigin(t, o, mux)
}

// startOriginRoot is an origin whose every path is handler's.
func startOriginRoot(t testing.TB, handler http.Handler) *origin {
	return serveOrigin(t, &origin{}, handler)
}

func serveOrigin(t testing.TB, o *origin, h http.Handler) *origin {
	o.Server = httptest.NewUnstartedServer(h)
	o.EnableHTTP2 = false
	o.Config.ErrorLog = log.New(io.Discard, "", 0) // a client refusing its certificate is what some tests want
	o.StartTLS()
	t.Cleanup(o.Close)
	o.addr = o.Listener.Addr().String()
	return o
}

func (o *origin) last() seenRequest {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.seen) == 0 {
		return seenRequest{}
	}
	return o.seen[len(o.seen)-1]
}

func (o *origin) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.seen)
}

// fixture is the whole path a sandbox's request takes: the egress proxy
// with the broker as its interceptor, the trust files, and the secrets.
type fixture struct {
	proxy   *egress.Server
	sock    string // the proxy's Unix socket
	tcp     string // and a loopback port (curl, git, Python and Node need one)
	broker  *Broker
	ca      *CA
	set     *secrets.Set
	trust   TrustFiles
	log     *memLog
	env     []string // the sandbox's trust variables and proxy
	roots   *x509.CertPool
	system  []byte
	tempDir string
}

type fixtureOptions struct {
	allow    []string // egress rules
	bindings []secrets.Binding
	values   map[string]string // host variable → real value
	login    *ClaudeLogin
	roots    []*x509.Certificate // what the broker trusts upstream; nil: every origin started
	origins  []*origin
	maxBody  int64
	// names the proxy resolves to 127.0.0.1 (stand-ins named like real hosts)
	loopbackNames []string
}

type loopbackResolver []string

func (r loopbackResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	for _, n := range r {
		if n == host {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func newFixture(t testing.TB, fo fixtureOptions) *fixture {
	t.Helper()
	f := &fixture{log: &memLog{}, tempDir: t.TempDir()}
	rules, err := egress.ParseRules(fo.allow)
	if err != nil {
		t.Fatal(err)
	}
	f.set = secrets.Resolve(context.Background(), fo.bindings, secrets.Options{LookupEnv: func(k string) (string, bool) {
		v, ok := fo.values[k]
		return v, ok
	}})
	for _, w := range f.set.Warnings() {
		t.Fatalf("secret: %s", w)
	}
	f.ca, err = NewCA(CAOptions{Hosts: Hosts(f.set, fo.login), Label: "test"})
	if err != nil {
		t.Fatal(err)
	}
	// The host's bundle, as the sandbox's bundle starts from it.
	_, f.system, err = SystemBundle(nil)
	if err != nil {
		t.Fatal(err)
	}
	f.trust, err = f.ca.WriteTrust(filepath.Join(f.tempDir, "trust"), f.system)
	if err != nil {
		t.Fatal(err)
	}
	f.roots = x509.NewCertPool()
	if fo.roots != nil {
		for _, c := range fo.roots {
			f.roots.AddCert(c)
		}
	} else {
		for _, o := range fo.origins {
			f.roots.AddCert(o.Certificate())
		}
	}
	f.broker, err = New(Options{CA: f.ca, Secrets: f.set, Login: fo.login, Log: f.log, Roots: f.roots, MaxBody: fo.maxBody})
	if err != nil {
		t.Fatal(err)
	}
	eo := egress.Options{Policy: egress.NewPolicy(egress.Allowlist, rules, nil), Log: f.log, Intercept: f.broker.Intercept}
	if fo.loopbackNames != nil {
		eo.Resolver = loopbackResolver(fo.loopbackNames)
	}
	f.proxy, err = egress.New(eo)
	if err != nil {
		t.Fatal(err)
	}
	f.sock = filepath.Join(f.tempDir, "egress.sock")
	ul, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.tcp = tl.Addr().String()
	var wg sync.WaitGroup
	for _, ln := range []net.Listener{ul, tl} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.proxy.Serve(ln); !errors.Is(err, egress.ErrClosed) {
				t.Errorf("Serve: %v", err)
			}
		}()
	}
	t.Cleanup(func() {
		f.proxy.Close()
		wg.Wait()
	})
	envMap := Env(f.trust.Bundle, f.trust.CA)
	keys := make([]string, 0, len(envMap))
	for k := range envMap {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f.env = append(f.env, k+"="+envMap[k])
	}
	proxyURL := "http://" + f.tcp
	f.env = append(f.env, "HTTPS_PROXY="+proxyURL, "https_proxy="+proxyURL, "NO_PROXY=", "no_proxy=")
	return f
}

// placeholder is the sandbox's value of a variable.
func (f *fixture) placeholder(t testing.TB, variable string) string {
	t.Helper()
	p, ok := f.set.Env()[variable]
	if !ok {
		t.Fatalf("no placeholder for %s", variable)
	}
	return p
}

// goClient is a Go client inside the sandbox: the proxy over its Unix
// socket, trusting the bundle as SSL_CERT_FILE would make it.
func (f *fixture) goClient(t testing.TB) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(f.trust.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("bundle has no certificates")
	}
	return f.goClientTrusting(pool)
}

func (f *fixture) goClientTrusting(pool *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: "egress"}),
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", f.sock)
		},
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true, // it asks for h2; the broker answers http/1.1
	}}
}

// run runs a client program inside the "sandbox": its environment is
// the sandbox's trust variables and proxy, and nothing else of ours.
func (f *fixture) run(t testing.TB, extraEnv []string, name string, args ...string) (string, error) {
	t.Helper()
	bin := testenv.RequireProgram(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + f.tempDir, "LANG=C"}, f.env...)
	cmd.Env = append(cmd.Env, extraEnv...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func envBinding(t testing.TB, name string, bodies bool, hosts ...string) secrets.Binding {
	t.Helper()
	b := secrets.Binding{Name: name, Variable: name, Bodies: bodies, Source: secrets.Source{Kind: secrets.FromEnv, Env: name}}
	for _, h := range hosts {
		p, err := secrets.ParseHost(h)
		if err != nil {
			t.Fatal(err)
		}
		b.Hosts = append(b.Hosts, p)
	}
	return b
}

func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }
