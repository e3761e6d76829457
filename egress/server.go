package egress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// Options configure a Server. Only Policy is required.
type Options struct {
	Policy *Policy
	// Log receives one entry per decision; nil drops them.
	Log sessionlog.Logger
	// Resolver looks names up; nil is the host's (net.DefaultResolver).
	Resolver Resolver
	// Upstream, when set, is the proxy allowed destinations are reached
	// through (UpstreamFromEnv reads the host's).
	Upstream *Upstream
	// Intercept may take allowed tunnels over (the credential broker).
	Intercept Interceptor
	// Advice turns a fix (a configuration line such as
	// allow = ["evil.example.com:443"]) into the sentence a refusal
	// shows; nil is DefaultAdvice.
	Advice   func(fixLine string) string
	Timeouts Timeouts
}

// Timeouts bound every wait. Zero fields take the defaults shown.
type Timeouts struct {
	Handshake time.Duration // the first request head, the SOCKS5 negotiation (30s)
	Resolve   time.Duration // one name lookup (10s)
	Connect   time.Duration // connecting to a destination, or through the upstream proxy (30s)
	KeepAlive time.Duration // an HTTP client connection between requests (2m)
	// Idle ends a connection or tunnel on which no byte moved either way
	// for this long (15m). Long enough for a quiet SSH session or a slow
	// model answer; clients that stay open longer send keep-alives.
	Idle time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Handshake, 30*time.Second)
	def(&t.Resolve, 10*time.Second)
	def(&t.Connect, 30*time.Second)
	def(&t.KeepAlive, 2*time.Minute)
	def(&t.Idle, 15*time.Minute)
	return t
}

// DefaultAdvice says where a fix goes and that widening needs trust.
func DefaultAdvice(fixLine string) string {
	return fixLine + " in claude-sandbox.toml, then run `claude-sandbox trust`"
}

// Stats count a server's decisions, for `claude-sandbox ps --json`.
type Stats struct {
	Allowed uint64 `json:"allowed"`
	Refused uint64 `json:"refused"`
	// Failed: allowed, but the name did not resolve, the destination did
	// not answer, or the upstream proxy refused.
	Failed uint64 `json:"failed"`
	// Open connections from the sandbox now.
	Open int64 `json:"open"`
}

// Server is the proxy. One serves one sandbox, on any number of
// listeners; the HTTP and SOCKS5 protocols share each one (the first byte
// tells them apart).
type Server struct {
	opts     Options
	t        Timeouts
	log      sessionlog.Logger
	resolver Resolver
	policy   atomic.Pointer[Policy]

	allowed, refused, failed atomic.Uint64
	open                     atomic.Int64

	ctx    context.Context // ends when the server closes
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup

	// buffers are lent to forwarded response bodies and to tunnels'
	// downloads (see bodyBuffer, copyBursts).
	buffers bufferPool

	httpStart sync.Once
	httpQueue *connQueue
	httpSrv   *http.Server
	transport *http.Transport
	forward   *httputil.ReverseProxy

	// dial connects to an address (an IP literal) or to the upstream
	// proxy. Tests replace it to stand loopback servers in for public
	// addresses without sending anything off the machine.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("egress: server closed")

// New makes a server. It starts nothing until Serve.
func New(opts Options) (*Server, error) {
	if opts.Policy == nil {
		return nil, errors.New("egress: no policy")
	}
	s := &Server{
		opts:      opts,
		t:         opts.Timeouts.withDefaults(),
		log:       opts.Log,
		resolver:  opts.Resolver,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
		buffers:   newBufferPool(),
	}
	if s.log == nil {
		s.log = sessionlog.Discard
	}
	if s.resolver == nil {
		s.resolver = net.DefaultResolver
	}
	if s.opts.Advice == nil {
		s.opts.Advice = DefaultAdvice
	}
	s.policy.Store(opts.Policy)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	s.dial = d.DialContext
	s.setupHTTP()
	return s, nil
}

// Policy is the policy in force.
func (s *Server) Policy() *Policy { return s.policy.Load() }

// SetPolicy replaces the policy for every later decision (a narrowed
// configuration applies at once); open tunnels stay open.
func (s *Server) SetPolicy(p *Policy) {
	if p != nil {
		s.policy.Store(p)
	}
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{Allowed: s.allowed.Load(), Refused: s.refused.Load(), Failed: s.failed.Load(), Open: s.open.Load()}
}

// Serve accepts connections on ln until ln fails or the server closes;
// it returns ErrClosed after Close. ln is a Unix socket in practice.
func (s *Server) Serve(ln net.Listener) error {
	if !s.enter() {
		return ErrClosed
	}
	defer s.wg.Done()
	s.mu.Lock()
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	s.httpStart.Do(func() {
		if s.enter() {
			go func() {
				defer s.wg.Done()
				_ = s.httpSrv.Serve(s.httpQueue)
			}()
		}
	})
	var backoff time.Duration
	for {
		raw, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrClosed
			}
			if retryAccept(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
					continue
				case <-s.ctx.Done():
					return ErrClosed
				}
			}
			return err
		}
		backoff = 0
		c, ok := s.track(raw)
		if !ok {
			raw.Close()
			return ErrClosed
		}
		go s.serveConn(c)
	}
}

// retryAccept: a full file table (EMFILE) or a connection aborted before
// it was accepted passes; the listener stays.
func retryAccept(err error) bool {
	var ne net.Error
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// Close stops every listener and connection, and returns once every
// goroutine the server started has ended.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	lns := make([]net.Listener, 0, len(s.listeners))
	for ln := range s.listeners {
		lns = append(lns, ln)
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.cancel()
	for _, ln := range lns {
		ln.Close()
	}
	s.httpQueue.Close()
	s.httpSrv.Close()
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
	s.transport.CloseIdleConnections()
	return nil
}

// enter counts a goroutine that Close must wait for, unless closed.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track wraps a client's connection, counts it, and enters the goroutine
// that serves it.
func (s *Server) track(raw net.Conn) (*conn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	var c *conn
	c = newConn(raw, newClock(), s.t.Idle, func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.open.Add(-1)
	})
	s.conns[c] = struct{}{}
	s.open.Add(1)
	s.wg.Add(1)
	return c, true
}

// serveConn tells the protocols apart by the first byte: 5 is SOCKS5, 4
// SOCKS4, anything else HTTP (a request line starts with a letter).
func (s *Server) serveConn(c *conn) {
	defer s.wg.Done()
	_ = c.SetReadDeadline(time.Now().Add(s.t.Handshake))
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		c.Close()
		return
	}
	switch first[0] {
	case 5:
		s.serveSOCKS5(c)
		c.Close()
	case 4:
		s.refuseSOCKS4(c)
		c.Close()
	default:
		c.prefix = append(c.prefix, first[0])
		_ = c.SetReadDeadline(time.Time{})
		if !s.httpQueue.push(c) {
			c.Close()
		}
	}
}

// outcome records a decision: the log entry and the counters.
func (s *Server) outcome(op string, v Verdict, via *url.URL) {
	e := sessionlog.Entry{Service: "net", Op: op, Target: v.Target, Rule: v.Rule, Reason: v.Reason}
	if v.RuleSource != "" {
		e.Rule += " (" + v.RuleSource + ")"
	}
	switch {
	case v.Allowed:
		s.allowed.Add(1)
		e.Decision = sessionlog.Allow
		if via != nil {
			e.Reason = joinSentences(e.Reason, "Through the upstream proxy "+redact(via)+".")
		}
	case v.Failed:
		s.failed.Add(1)
		e.Decision = sessionlog.Note
	default:
		s.refused.Add(1)
		e.Decision = sessionlog.Refuse
		if v.Fix != "" {
			e.Fix = FixLine(v.Fix)
		}
	}
	s.log.Log(e)
}

// failure records an allowed connection that could not be made.
func (s *Server) failure(op string, v Verdict, err error) {
	s.failed.Add(1)
	s.log.Log(sessionlog.Entry{Service: "net", Decision: sessionlog.Note, Op: op, Target: v.Target, Rule: v.Rule,
		Reason: "allowed, but the connection failed: " + err.Error()})
}

func joinSentences(a, b string) string {
	if a == "" {
		return b
	}
	return a + " " + b
}

// refusalText is what the client is told: what was refused, why, and
// the configuration line that would allow it.
func (s *Server) refusalText(op string, v Verdict) string {
	msg := fmt.Sprintf("claude-sandbox refused %s %s: %s", op, v.Target, v.Reason)
	if v.Fix != "" {
		msg += " To allow it: " + s.opts.Advice(FixLine(v.Fix)) + "."
	}
	return msg
}

// route is how an allowed destination is reached.
type route struct {
	v     Verdict
	proxy *url.URL // the upstream proxy, or nil: straight to v.Addrs
}

// check decides a destination for op and records the decision.
func (s *Server) check(ctx context.Context, op string, d Destination, upstreamFor func(string) *url.URL) route {
	var proxy *url.URL
	lookup := true
	if name, addr, err := normalizeHost(d.Host); err == nil {
		host := name
		if name == "" {
			host = addr.String()
			lookup = false
		}
		proxy = upstreamFor(joinHostPort(host, d.Port))
	}
	if lookup {
		// The timeout bounds the name's lookup. An address is not looked
		// up, and its request is spared the timer.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.t.Resolve)
		defer cancel()
	}
	v := s.Policy().check(ctx, d, s.resolver, proxy != nil)
	if v.Allowed || v.MethodsOnly == nil {
		s.outcome(op, v, proxy)
	}
	return route{v: v, proxy: proxy}
}

// connect reaches an allowed destination: the checked addresses in turn
// (never the name again), or the upstream proxy.
func (s *Server) connect(ctx context.Context, rt route) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.t.Connect)
	defer cancel()
	if rt.proxy != nil {
		target := rt.v.Target
		return connectVia(ctx, s.dial, rt.proxy, target)
	}
	return s.dialAddrs(ctx, rt.v.Addrs, rt.v.port)
}

func (s *Server) dialAddrs(ctx context.Context, addrs []netip.Addr, port uint16) (net.Conn, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no checked address to connect to")
	}
	var first error
	for i, a := range addrs {
		attempt := ctx
		cancel := func() {}
		if dl, ok := ctx.Deadline(); ok && i < len(addrs)-1 {
			// Leave time for the other addresses when one does not answer.
			share := time.Until(dl) / time.Duration(len(addrs)-i)
			attempt, cancel = context.WithTimeout(ctx, share)
		}
		c, err := s.dial(attempt, "tcp", netip.AddrPortFrom(a, port).String())
		cancel()
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// dialError is a connection failure in a person's words.
func dialError(err error) string {
	var ue *UpstreamError
	switch {
	case errors.As(err, &ue):
		return ue.Error()
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return "no answer (timed out)"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

// tunnel connects an allowed tunnel's client: to an interceptor that
// takes it, or to the destination. ready answers the client (the tunnel
// is open, or why not) exactly once, and returns the client's connection
// when it is open.
func (s *Server) tunnel(op string, rt route, ready func(err error) *conn) {
	t := &Tunnel{Op: op, Verdict: rt.v, dial: func(ctx context.Context) (net.Conn, error) { return s.connect(ctx, rt) }}
	var handler TunnelHandler
	if s.opts.Intercept != nil {
		handler = s.opts.Intercept(t)
	}
	if handler != nil {
		if !rt.v.Allowed {
			// Allowed only for methods the interceptor will check.
			v := rt.v
			v.Allowed, v.Reason = true, "allowed for "+strings.Join(v.MethodsOnly, ", ")+" only; the interceptor checks each request."
			s.outcome(op, v, rt.proxy)
		}
		client := ready(nil)
		if client == nil {
			return
		}
		defer client.Close()
		if uc, ok := client.Conn.(*net.UnixConn); ok {
			// As for a spliced tunnel (see splice): an interceptor that
			// relays a download writes faster than 208 KiB at a time.
			_ = uc.SetWriteBuffer(tunnelSendBuffer)
		}
		if err := handler(s.ctx, client); err != nil {
			s.log.Log(sessionlog.Entry{Service: "net", Decision: sessionlog.Note, Op: op, Target: rt.v.Target, Reason: "interceptor: " + err.Error()})
		}
		return
	}
	if !rt.v.Allowed {
		s.outcome(op, rt.v, rt.proxy)
		ready(&refusal{rt.v})
		return
	}
	up, err := s.connect(s.ctx, rt)
	if err != nil {
		s.failure(op, rt.v, errors.New(dialError(err)))
		ready(err)
		return
	}
	client := ready(nil)
	if client == nil {
		up.Close()
		return
	}
	splice(client, up, s.t.Idle, s.buffers)
}

// refusal is a policy's refusal passed to ready.
type refusal struct{ v Verdict }

func (r *refusal) Error() string { return r.v.Reason }
