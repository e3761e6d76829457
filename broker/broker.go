package broker

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/claude-sandbox/claude-sandbox/egress"
	"github.com/claude-sandbox/claude-sandbox/secrets"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// Options configure a Broker. CA is required.
type Options struct {
	CA *CA
	// Secrets are the run's resolved secrets (nil: none).
	Secrets *secrets.Set
	// Login keeps Claude Code's OAuth login outside (nil: not handled).
	Login *ClaudeLogin
	// Log receives one entry per substitution and per failure.
	Log sessionlog.Logger
	// Roots verify the real hosts; nil is the host's own roots
	// (x509.SystemCertPool: SSL_CERT_FILE, then the distribution's
	// bundle). Tests add a loopback server's CA.
	Roots *x509.CertPool
	// MaxBody bounds a request body searched for placeholders (secrets
	// with bodies = true); a larger one is sent as it is, and the log
	// says so. Zero: DefaultMaxBody.
	MaxBody int64
	// Handshake bounds the client's TLS handshake and each request head
	// (30s); KeepAlive a client connection between requests (2m);
	// ResponseHeader the real host's answer (15m: a model may think).
	Handshake, KeepAlive, ResponseHeader time.Duration
}

// DefaultMaxBody is the largest request body searched for placeholders.
const DefaultMaxBody = 16 << 20

// maxHeaderBytes bounds a request or response head, as egress does.
const maxHeaderBytes = 64 << 10

// Broker terminates TLS for the hosts secrets are bound to and swaps
// placeholders for values on the way out. Its Intercept is the egress
// server's Options.Intercept.
type Broker struct {
	opts  Options
	log   sessionlog.Logger
	roots *x509.CertPool

	substituted, refused, failed atomic.Uint64
}

// New makes a broker.
func New(opts Options) (*Broker, error) {
	if opts.CA == nil {
		return nil, errors.New("broker: no CA")
	}
	b := &Broker{opts: opts, log: opts.Log, roots: opts.Roots}
	if b.log == nil {
		b.log = sessionlog.Discard
	}
	if b.roots == nil {
		pool, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("broker: the host's CA roots: %w", err)
		}
		b.roots = pool
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&b.opts.Handshake, 30*time.Second)
	def(&b.opts.KeepAlive, 2*time.Minute)
	def(&b.opts.ResponseHeader, 15*time.Minute)
	if b.opts.MaxBody <= 0 {
		b.opts.MaxBody = DefaultMaxBody
	}
	return b, nil
}

// Counts are the broker's decisions: requests that had a value put in,
// requests refused (a method the rule does not allow), and requests
// that could not reach or verify the real host.
type Counts struct{ Substituted, Refused, Failed uint64 }

// Counts returns the counters.
func (b *Broker) Counts() Counts {
	return Counts{b.substituted.Load(), b.refused.Load(), b.failed.Load()}
}

// Hosts are the hosts the broker may intercept: every resolved secret's
// and the login's, without ports, as NewCA takes them.
func Hosts(set *secrets.Set, login *ClaudeLogin) []string {
	hosts := set.Hosts()
	for _, h := range login.Hosts() {
		if !contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Intercept takes over a tunnel to a host a secret (or the login) is
// bound to, and leaves every other tunnel to the proxy: a placeholder
// sent elsewhere travels inside TLS the broker never opens.
func (b *Broker) Intercept(t *egress.Tunnel) egress.TunnelHandler {
	host, portText, err := net.SplitHostPort(t.Verdict.Target)
	if err != nil {
		return nil
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil
	}
	inj := b.opts.Secrets.For(host, port)
	login := b.opts.Login.bound(host, port)
	if inj == nil && !login {
		return nil
	}
	if !b.opts.CA.Permits(host) {
		// The CA was made for other hosts (a configuration changed under a
		// running sandbox): the tunnel passes untouched, placeholder and all.
		b.log.Log(sessionlog.Entry{Service: "secret", Decision: sessionlog.Note, Op: t.Op, Target: t.Verdict.Target,
			Reason: "a secret is bound here, but the sandbox's CA was made without this host; the request goes out with the placeholder. Restart the sandbox."})
		return nil
	}
	ic := &interception{b: b, t: t, host: host, port: port, target: t.Verdict.Target, inj: inj, login: login}
	return ic.serve
}

// interception is one tunnel the broker serves.
type interception struct {
	b      *Broker
	t      *egress.Tunnel
	host   string
	port   int
	target string
	inj    *secrets.Injector
	login  bool
}

func (ic *interception) serve(ctx context.Context, client net.Conn) error {
	b := ic.b
	leaf, err := b.opts.CA.Leaf(ic.host)
	if err != nil {
		return err
	}
	batched := &batchConn{Conn: client}
	tc := tls.Server(batched, &tls.Config{
		Certificates: []tls.Certificate{*leaf},
		// HTTP/1.1 only: a client that asks for h2 settles for it, and
		// every request stays visible to the broker.
		NextProtos: []string{"http/1.1"},
		MinVersion: tls.VersionTLS12,
	})
	_ = client.SetDeadline(time.Now().Add(b.opts.Handshake))
	hctx, cancel := context.WithTimeout(ctx, b.opts.Handshake)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		b.failed.Add(1)
		b.log.Log(sessionlog.Entry{Service: "secret", Decision: sessionlog.Note, Op: ic.t.Op, Target: ic.target,
			Reason: "the client's TLS handshake with the proxy failed (" + err.Error() + "); a client that does not trust the sandbox's CA " +
				"(SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, …) cannot reach a host a secret is bound to"})
		return nil
	}
	_ = client.SetDeadline(time.Time{})

	tr := ic.transport()
	defer tr.CloseIdleConnections()
	rp := &httputil.ReverseProxy{
		Rewrite:        ic.rewrite,
		Transport:      tr,
		FlushInterval:  -1, // stream: server-sent events reach the client as they come
		ErrorLog:       log.New(io.Discard, "", 0),
		ErrorHandler:   ic.upstreamError,
		ModifyResponse: ic.maskResponse,
		BufferPool:     copyBuffers,
	}
	conn := &closeNotifyConn{Conn: &batchWriter{Conn: tc, under: batched}, closed: make(chan struct{})}
	ln := &oneConnListener{conn: conn, done: make(chan struct{})}
	srv := &http.Server{
		Handler:                      http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { ic.handle(w, r, rp, tr) }),
		ReadHeaderTimeout:            b.opts.Handshake,
		IdleTimeout:                  b.opts.KeepAlive,
		MaxHeaderBytes:               maxHeaderBytes,
		ErrorLog:                     log.New(io.Discard, "", 0),
		BaseContext:                  func(net.Listener) context.Context { return ctx },
		DisableGeneralOptionsHandler: true,
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	select {
	case <-conn.closed:
	case <-ctx.Done():
		_ = srv.Close()
		_ = conn.Close()
	}
	ln.Close()
	<-served
	return nil
}

// copyBuffers are the reverse proxy's copy buffers: larger than its
// default 32 KiB, so a download moves in fewer, fuller TLS records.
var copyBuffers = &bufferPool{pool: sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}}

type bufferPool struct{ pool sync.Pool }

func (p *bufferPool) Get() []byte  { return *p.pool.Get().(*[]byte) }
func (p *bufferPool) Put(b []byte) { p.pool.Put(&b) }

// transport reaches the real host: through Tunnel.Dial (the address the
// policy checked, or the upstream proxy), over TLS verified against the
// host's roots for the name the client asked for, HTTP/1.1.
func (ic *interception) transport() *http.Transport {
	b := ic.b
	return &http.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			raw, err := ic.t.Dial(ctx)
			if err != nil {
				return nil, &reachError{err}
			}
			tc := tls.Client(raw, &tls.Config{
				ServerName: strings.Trim(ic.host, "[]"),
				RootCAs:    b.roots,
				NextProtos: []string{"http/1.1"},
				MinVersion: tls.VersionTLS12,
			})
			if err := tc.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, &verifyError{err}
			}
			return tc, nil
		},
		MaxIdleConnsPerHost:    2,
		IdleConnTimeout:        90 * time.Second,
		ResponseHeaderTimeout:  b.opts.ResponseHeader,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: maxHeaderBytes,
		DisableCompression:     true,
		TLSNextProto:           map[string]func(string, *tls.Conn) http.RoundTripper{},
		WriteBufferSize:        64 << 10,
		ReadBufferSize:         64 << 10,
	}
}

type reachError struct{ err error }

func (e *reachError) Error() string { return "could not connect: " + e.err.Error() }
func (e *reachError) Unwrap() error { return e.err }

type verifyError struct{ err error }

func (e *verifyError) Error() string { return "TLS with the real host failed: " + e.err.Error() }
func (e *verifyError) Unwrap() error { return e.err }

// handle serves one request from the sandbox.
func (ic *interception) handle(w http.ResponseWriter, r *http.Request, rp *httputil.ReverseProxy, tr http.RoundTripper) {
	b := ic.b
	if !ic.t.AllowsMethod(r.Method) {
		b.refused.Add(1)
		v := ic.t.Verdict
		msg := fmt.Sprintf("claude-sandbox refused %s %s: the rule %q allows only %s.", r.Method, ic.target, v.Rule, strings.Join(v.MethodsOnly, ", "))
		b.log.Log(sessionlog.Entry{Service: "net", Decision: sessionlog.Refuse, Op: r.Method, Target: ic.target, Rule: v.Rule, Reason: msg})
		w.Header().Set("X-Claude-Sandbox-Refused", msg)
		egress.PlainError(w, http.StatusForbidden, msg)
		return
	}
	if ic.login && b.opts.Login.isRefresh(ic.host, ic.port, r) {
		b.opts.Login.serveRefresh(w, r, ic, rp, tr)
		return
	}
	if ic.inj.Bodies() && r.Body != nil && r.Body != http.NoBody {
		if err := ic.substituteBody(r); err != nil {
			egress.PlainError(w, http.StatusBadRequest, "claude-sandbox: reading the request body: "+err.Error())
			return
		}
	}
	rp.ServeHTTP(w, r)
}

// substituteBody reads a body of up to MaxBody bytes and puts values in
// place of placeholders; a larger body goes out as it came.
func (ic *interception) substituteBody(r *http.Request) error {
	b := ic.b
	if r.Header.Get("Content-Encoding") != "" {
		// A compressed body cannot be searched; it goes out unchanged.
		return nil
	}
	buf, err := io.ReadAll(io.LimitReader(r.Body, b.opts.MaxBody+1))
	if err != nil {
		return err
	}
	if int64(len(buf)) > b.opts.MaxBody {
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}
		b.log.Log(sessionlog.Entry{Service: "secret", Decision: sessionlog.Note, Op: r.Method, Target: ic.target,
			Reason: fmt.Sprintf("request body over %d MiB: sent as it is, without looking for placeholders", b.opts.MaxBody>>20)})
		return nil
	}
	r.Body.Close()
	out, used := ic.inj.Body(buf)
	if len(used) > 0 {
		ic.logSubstitution(r.Method, used, "the request body")
	}
	r.Body = io.NopCloser(bytes.NewReader(out))
	r.ContentLength = int64(len(out))
	r.Header.Del("Content-Length")
	r.TransferEncoding = nil
	return nil
}

// rewrite sends a request to the tunnel's destination, whatever its own
// Host header says, with placeholders replaced in its headers.
func (ic *interception) rewrite(pr *httputil.ProxyRequest) {
	u := *pr.In.URL
	u.Scheme, u.Host, u.User = "https", hostHeader(ic.target), nil
	pr.Out.URL = &u
	pr.Out.Host = u.Host
	if _, ok := pr.Out.Header["User-Agent"]; !ok {
		pr.Out.Header.Set("User-Agent", "") // do not add Go's
	}
	// What comes back must be readable to be masked: no compression.
	pr.Out.Header.Set("Accept-Encoding", "identity")
	var used, where []string
	for name, values := range pr.Out.Header {
		for i, v := range values {
			nv, names := ic.inj.Header(name, v)
			if ic.login {
				var loginUsed bool
				if nv, loginUsed = ic.b.opts.Login.header(nv); loginUsed {
					names = append(names, LoginSecretName)
				}
			}
			if len(names) > 0 {
				values[i] = nv
				used = appendNew(used, names...)
				where = appendNew(where, http.CanonicalHeaderKey(name))
			}
		}
	}
	if len(used) > 0 {
		ic.logSubstitution(pr.In.Method, used, "the "+strings.Join(where, ", ")+" header")
	}
}

func appendNew(list []string, items ...string) []string {
	for _, s := range items {
		if !contains(list, s) {
			list = append(list, s)
		}
	}
	return list
}

func (ic *interception) logSubstitution(method string, names []string, where string) {
	ic.b.substituted.Add(1)
	ic.b.log.Log(sessionlog.Entry{Service: "secret", Decision: sessionlog.Allow, Op: method, Target: ic.target,
		Rule: ic.rules(names), Reason: strings.Join(names, ", ") + " put into " + where})
}

// rules names where each secret was configured.
func (ic *interception) rules(names []string) string {
	var out []string
	for _, sec := range ic.b.opts.Secrets.Secrets() {
		if !contains(names, sec.Name) {
			continue
		}
		switch {
		case sec.BuiltIn && sec.Path == "":
			out = append(out, "built-in secret "+sec.Name)
		case sec.Line > 0:
			out = append(out, fmt.Sprintf("[secrets.%s] (%s:%d)", sec.Name, sec.Path, sec.Line))
		default:
			out = append(out, fmt.Sprintf("[secrets.%s] (%s)", sec.Name, sec.Path))
		}
	}
	if contains(names, LoginSecretName) {
		out = append(out, "claude-login = \"placeholder\"")
	}
	return strings.Join(out, "; ")
}

// hostHeader drops the default port 443, as clients write it.
func hostHeader(target string) string {
	if h, p, err := net.SplitHostPort(target); err == nil && p == "443" {
		if strings.Contains(h, ":") {
			return "[" + h + "]"
		}
		return h
	}
	return target
}

// maskResponse replaces real values with placeholders in what goes back
// into the sandbox: every header, and the body as it streams.
func (ic *interception) maskResponse(resp *http.Response) error {
	set := ic.b.opts.Secrets
	login := ic.b.opts.Login
	for _, values := range resp.Header {
		for i, v := range values {
			values[i] = login.maskString(string(set.Mask([]byte(v))))
		}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// After the handshake the connection carries another protocol
		// (WebSocket), relayed as it is.
		return nil
	}
	body := resp.Body
	switch enc := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		// Asked for identity and got gzip: unpack it, or a value inside
		// would pass unseen.
		zr, err := gzip.NewReader(body)
		if err != nil {
			return fmt.Errorf("the host's gzip answer: %w", err)
		}
		body = readCloser{zr, resp.Body}
		resp.Header.Del("Content-Encoding")
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
	default:
		return fmt.Errorf("the host answered in %q encoding, which the proxy cannot search for secrets", enc)
	}
	masked := set.MaskReader(login.maskReader(body))
	if masked != io.Reader(body) {
		if resp.ContentLength >= fillAbove {
			masked = &fillReader{r: masked}
		}
		resp.Body = readCloser{masked, body}
		if !set.MaskKeepsLength() || !login.maskKeepsLength() {
			resp.Header.Del("Content-Length")
			resp.ContentLength = -1
		}
	}
	return nil
}

// A download of a known length is passed on in chunks of fillTo bytes
// rather than one TLS record (16 KiB) at a time: a quarter of the writes
// to the sandbox's connection, each a full set of records. A stream of
// unknown length (server-sent events) is passed on as it comes.
const (
	fillAbove = 1 << 20
	fillTo    = 128 << 10
)

type fillReader struct{ r io.Reader }

func (f *fillReader) Read(p []byte) (int, error) {
	want := min(len(p), fillTo)
	n := 0
	for n < want {
		k, err := f.r.Read(p[n:want])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// upstreamError answers 502 and says why: the real host could not be
// reached, or it could not be verified.
func (ic *interception) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the client went away
	}
	ic.b.failed.Add(1)
	reason := err.Error()
	var ve *verifyError
	if errors.As(err, &ve) {
		reason = "its certificate could not be verified against this machine's CA roots: " + ve.err.Error()
	}
	msg := "claude-sandbox could not reach " + ic.target + ": " + reason
	ic.b.log.Log(sessionlog.Entry{Service: "secret", Decision: sessionlog.Note, Op: r.Method, Target: ic.target, Reason: msg})
	w.Header().Set("X-Claude-Sandbox-Failed", egress.HeaderValue(msg))
	egress.PlainError(w, http.StatusBadGateway, msg)
}

// batchConn gathers the TLS records of one large write into one write
// to the sandbox's connection (crypto/tls writes each 16 KiB record on
// its own): a download costs a system call per 128 KiB, not per record.
type batchConn struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      []byte
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.batching {
		c.buf = append(c.buf, p...)
		c.mu.Unlock()
		return len(p), nil
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *batchConn) begin() {
	c.mu.Lock()
	c.batching = true
	c.mu.Unlock()
}

// end writes what was gathered; records written meanwhile by another
// path of crypto/tls (an alert) follow in order.
func (c *batchConn) end() error {
	c.mu.Lock()
	c.batching = false
	buf := c.buf
	c.buf = c.buf[:0]
	c.mu.Unlock()
	if len(buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(buf)
	return err
}

// batchWriter is the TLS connection as the HTTP server sees it: a large
// write's records leave together.
type batchWriter struct {
	*tls.Conn
	under *batchConn
}

func (w *batchWriter) Write(p []byte) (int, error) {
	if len(p) < 2*16<<10 {
		return w.Conn.Write(p)
	}
	w.under.begin()
	n, err := w.Conn.Write(p)
	if ferr := w.under.end(); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}

// closeNotifyConn tells when the HTTP server (or a handler that took the
// connection over for a WebSocket) is done with the client's connection.
type closeNotifyConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *closeNotifyConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}

// oneConnListener gives the HTTP server one connection, then waits.
type oneConnListener struct {
	mu   sync.Mutex
	conn net.Conn
	done chan struct{}
	once sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.conn
	l.conn = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return brokerAddr{} }

type brokerAddr struct{}

func (brokerAddr) Network() string { return "tls" }
func (brokerAddr) String() string  { return "broker" }
