package egress

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"
)

// maxHeaderBytes bounds a request head from the sandbox (net/http adds
// 4 KiB of slack) and a response head from a destination.
const maxHeaderBytes = 64 << 10

// The HTTP side is net/http's server (request parsing, keep-alive,
// header limits, 100-continue) and its reverse proxy (hop-by-hop headers,
// 1xx, trailers, protocol upgrades), fed the connections the sniffer
// hands over.
func (s *Server) setupHTTP() {
	s.httpQueue = &connQueue{ch: make(chan net.Conn), done: make(chan struct{})}
	s.httpSrv = &http.Server{
		Handler:                      http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout:            s.t.Handshake,
		IdleTimeout:                  s.t.KeepAlive,
		MaxHeaderBytes:               maxHeaderBytes,
		BaseContext:                  func(net.Listener) context.Context { return s.ctx },
		ErrorLog:                     log.New(io.Discard, "", 0),
		DisableGeneralOptionsHandler: true,
	}
	s.transport = &http.Transport{
		Proxy: func(r *http.Request) (*url.URL, error) {
			rt, _ := r.Context().Value(routeKey{}).(*route)
			if rt == nil {
				return nil, nil
			}
			return rt.proxy, nil
		},
		DialContext:            s.dialForward,
		MaxIdleConns:           32,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        90 * time.Second,
		ResponseHeaderTimeout:  s.t.Idle,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: maxHeaderBytes,
		DisableCompression:     true, // pass the client's Accept-Encoding through, add none
		// Plain HTTP only: no HTTP/2 upgrade to a destination.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	s.forward = &httputil.ReverseProxy{
		Rewrite:       rewrite,
		Transport:     s.transport,
		FlushInterval: -1, // stream: an event stream or a slow download reaches the client as it comes
		BufferPool:    s.buffers,
		ErrorLog:      log.New(io.Discard, "", 0),
		ErrorHandler:  s.forwardError,
	}
}

type routeKey struct{}

// dialForward connects the reverse proxy: to the upstream proxy when the
// route has one (addr is then the proxy's), else to the checked
// addresses of the request's route. A request without a route is a bug
// here, and is not connected anywhere.
func (s *Server) dialForward(ctx context.Context, network, addr string) (net.Conn, error) {
	rt, _ := ctx.Value(routeKey{}).(*route)
	if rt == nil {
		return nil, errors.New("egress: a request without a checked destination")
	}
	var c net.Conn
	var err error
	if rt.proxy != nil {
		c, err = s.dial(ctx, network, addr)
	} else {
		c, err = s.dialAddrs(ctx, rt.v.Addrs, rt.v.port)
	}
	if err != nil {
		return nil, err
	}
	return newConn(c, newClock(), s.t.Idle, nil), nil
}

// rewrite sends the request to its checked destination: the Host header
// is the request's own authority (an absolute-form request's Host header
// is ignored, as RFC 9112 says), and nothing identifies the client
// (no X-Forwarded-For, no Via).
func rewrite(pr *httputil.ProxyRequest) {
	rt := pr.In.Context().Value(routeKey{}).(*route)
	u := *pr.In.URL
	u.Scheme = "http"
	u.Host = rt.v.Target
	u.User = nil
	pr.Out.URL = &u
	pr.Out.Host = hostHeader(rt.v.Target)
	if _, ok := pr.Out.Header["User-Agent"]; !ok {
		pr.Out.Header.Set("User-Agent", "") // do not add Go's
	}
}

// hostHeader drops the default port, as clients write it.
func hostHeader(target string) string {
	if h, p, err := net.SplitHostPort(target); err == nil && p == "80" {
		if strings.Contains(h, ":") {
			return "[" + h + "]"
		}
		return h
	}
	return target
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		return
	}
	defer s.wg.Done()
	if r.Method == http.MethodConnect {
		s.serveConnect(w, r)
		return
	}
	s.serveForward(w, r)
}

func (s *Server) serveConnect(w http.ResponseWriter, r *http.Request) {
	host, port, err := splitHostPort(r.Host, 0)
	if err != nil {
		PlainError(w, http.StatusBadRequest, "claude-sandbox: CONNECT needs host:port, not "+quoteForText(r.Host)+".")
		return
	}
	rt := s.check(r.Context(), "CONNECT", Destination{Host: host, Port: port}, s.opts.Upstream.forTunnel)
	if !rt.v.Allowed && rt.v.MethodsOnly == nil {
		s.refuseHTTP(w, "CONNECT", rt.v)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		PlainError(w, http.StatusInternalServerError, "claude-sandbox: cannot take the connection over")
		return
	}
	s.tunnel("CONNECT", rt, func(err error) *conn {
		var rf *refusal
		switch {
		case errors.As(err, &rf):
			s.refuseHTTP(w, "CONNECT", rf.v)
			return nil
		case err != nil:
			s.badGateway(w, rt.v, err)
			return nil
		}
		raw, brw, err := hj.Hijack()
		if err != nil {
			return nil
		}
		client := raw.(*conn)
		if n := brw.Reader.Buffered(); n > 0 {
			// Bytes the client sent before our answer (a TLS hello).
			early, _ := brw.Reader.Peek(n)
			client.prefix = append(client.prefix, early...)
		}
		_ = client.SetDeadline(time.Now().Add(s.t.Handshake))
		if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			client.Close()
			return nil
		}
		_ = client.SetDeadline(time.Time{})
		return client
	})
}

func (s *Server) serveForward(w http.ResponseWriter, r *http.Request) {
	authority := r.Host
	switch r.URL.Scheme {
	case "":
		// Origin form: a client that talks to the proxy as if it were the
		// server; the Host header names the destination.
	case "http":
		authority = r.URL.Host
	default:
		PlainError(w, http.StatusBadRequest, "claude-sandbox: the proxy forwards plain http:// requests; "+
			r.URL.Scheme+":// goes through CONNECT (set HTTPS_PROXY, or ALL_PROXY for other protocols).")
		return
	}
	host, port, err := splitHostPort(authority, 80)
	if err != nil || host == "" {
		PlainError(w, http.StatusBadRequest, "claude-sandbox: no destination host in the request (absolute URL or Host header).")
		return
	}
	rt := s.check(r.Context(), r.Method, Destination{Host: host, Port: port, Method: r.Method}, s.opts.Upstream.forHTTP)
	if !rt.v.Allowed {
		s.refuseHTTP(w, r.Method, rt.v)
		return
	}
	r = r.WithContext(context.WithValue(r.Context(), routeKey{}, &rt))
	s.forward.ServeHTTP(w, r)
}

func (s *Server) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	rt := r.Context().Value(routeKey{}).(*route)
	if errors.Is(err, context.Canceled) {
		return // the client went away
	}
	s.failure(r.Method, rt.v, errors.New(dialError(err)))
	s.badGateway(w, rt.v, err)
}

// refuseHTTP answers 403; the body and a header name the destination and
// the configuration line that would allow it. A name that does not
// resolve is no refusal: 502.
func (s *Server) refuseHTTP(w http.ResponseWriter, op string, v Verdict) {
	if v.Failed {
		msg := "claude-sandbox could not connect to " + v.Target + ": " + v.Reason
		w.Header().Set("X-Claude-Sandbox-Failed", HeaderValue(msg))
		PlainError(w, http.StatusBadGateway, msg)
		return
	}
	h := w.Header()
	h.Set("X-Claude-Sandbox-Refused", HeaderValue(v.Target+": "+v.Reason))
	if v.Fix != "" {
		h.Set("X-Claude-Sandbox-Fix", HeaderValue(s.opts.Advice(FixLine(v.Fix))))
	}
	PlainError(w, http.StatusForbidden, s.refusalText(op, v))
}

func (s *Server) badGateway(w http.ResponseWriter, v Verdict, err error) {
	msg := "claude-sandbox could not connect to " + v.Target + ": " + dialError(err) + "."
	w.Header().Set("X-Claude-Sandbox-Failed", HeaderValue(msg))
	PlainError(w, http.StatusBadGateway, msg)
}

// PlainError answers with a plain-text message, for people and scripts
// alike (the interceptor of a bound host answers the same way).
func PlainError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	io.WriteString(w, msg+"\n")
}

// HeaderValue keeps a header to printable ASCII on one line: the text
// carries names the client chose.
func HeaderValue(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	if len(b) > 1024 {
		b = append(b[:1021], "..."...)
	}
	return string(b)
}

func quoteForText(s string) string {
	if len(s) > 256 {
		s = s[:256]
	}
	return `"` + HeaderValue(s) + `"`
}

// splitHostPort reads host[:port]; defaultPort 0 means the port is
// required.
func splitHostPort(authority string, defaultPort uint16) (string, uint16, error) {
	host, ps, err := net.SplitHostPort(authority)
	if err != nil {
		if defaultPort == 0 {
			return "", 0, err
		}
		host, ps = strings.TrimSuffix(strings.TrimPrefix(authority, "["), "]"), ""
	}
	if ps == "" {
		if defaultPort == 0 {
			return "", 0, errors.New("no port")
		}
		return host, defaultPort, nil
	}
	port, err := parsePort(ps)
	return host, port, err
}

// connQueue is the listener the HTTP server accepts sniffed connections from.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return queueAddr{} }

type queueAddr struct{}

func (queueAddr) Network() string { return "sniffed" }
func (queueAddr) String() string  { return "egress" }

// bodyBuffer is the size of the buffers a forwarded response's body, and
// a tunnel's download, are copied through. ReverseProxy's own, 32 KiB, makes a bulk download cost
// a read and a write system call, and a wake-up, per 32 KiB: measured on
// loopback, 1 MiB takes the proxy's CPU per byte down by about a third
// (256 KiB: a fifth). A read returns what has arrived, so a slow stream
// still reaches the client as it comes.
const bodyBuffer = 1 << 20

// bufferPool keeps a few buffers for the next response or burst (a
// channel, not a sync.Pool, which would allocate to hold each slice).
type bufferPool chan []byte

func newBufferPool() bufferPool { return make(bufferPool, 4) }

func (p bufferPool) Get() []byte {
	select {
	case b := <-p:
		return b
	default:
		return make([]byte, bodyBuffer)
	}
}

func (p bufferPool) Put(b []byte) {
	if cap(b) != bodyBuffer {
		return
	}
	select {
	case p <- b[:bodyBuffer]:
	default:
	}
}
