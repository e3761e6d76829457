package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpproxy"
)

// Upstream is the host's own proxy (a corporate network's): allowed
// destinations are reached through it rather than directly, except those
// NO_PROXY names. Tunnels (CONNECT, SOCKS5) go through HTTPS_PROXY with
// CONNECT, plain HTTP requests through HTTP_PROXY, as curl and Go's own
// clients do on the host. Basic credentials in the proxy's URL
// (http://user:pass@proxy:3128) are sent as Proxy-Authorization.
//
// The policy is checked first, here: a name is resolved on this host when
// it can be, and its addresses must pass. A name this host cannot resolve
// (the upstream proxy resolves for the network) is passed on by name,
// allowed by its name rule alone. A refusal by the upstream proxy reaches
// the client as a 502 naming the upstream proxy and its answer (SOCKS5:
// reply 0x02 for its 403, 0x01 otherwise), and is logged.
type Upstream struct {
	cfg   httpproxy.Config
	proxy func(*url.URL) (*url.URL, error)
}

// UpstreamFromEnv reads HTTPS_PROXY, HTTP_PROXY and NO_PROXY (or their
// lower-case forms) through getenv. It returns nil when neither proxy is
// set.
func UpstreamFromEnv(getenv func(string) string) (*Upstream, error) {
	either := func(upper, lower string) string {
		if v := getenv(upper); v != "" {
			return v
		}
		return getenv(lower)
	}
	return NewUpstream(either("HTTP_PROXY", "http_proxy"), either("HTTPS_PROXY", "https_proxy"), either("NO_PROXY", "no_proxy"))
}

// NewUpstream makes an Upstream from proxy URLs (http:// or https://; a
// bare host:port means http://) and a NO_PROXY list. It returns nil when
// both URLs are empty.
func NewUpstream(httpProxy, httpsProxy, noProxy string) (*Upstream, error) {
	if httpProxy == "" && httpsProxy == "" {
		return nil, nil
	}
	for _, p := range []string{httpProxy, httpsProxy} {
		if p == "" {
			continue
		}
		u, err := parseProxyURL(p)
		if err != nil {
			return nil, err
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("upstream proxy %s: scheme %q is not supported (http:// or https://)", redact(u), u.Scheme)
		}
	}
	cfg := httpproxy.Config{HTTPProxy: httpProxy, HTTPSProxy: httpsProxy, NoProxy: noProxy}
	return &Upstream{cfg: cfg, proxy: cfg.ProxyFunc()}, nil
}

func parseProxyURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || u.Host == "" {
		if u2, err2 := url.Parse("http://" + s); err2 == nil && u2.Host != "" {
			return u2, nil
		}
		return nil, fmt.Errorf("upstream proxy %q is not a URL", redactString(s))
	}
	return u, nil
}

// forTunnel is the proxy for a tunnel to target (host:port), or nil.
func (u *Upstream) forTunnel(target string) *url.URL { return u.route("https", target) }

// forHTTP is the proxy for a plain HTTP request to target, or nil.
func (u *Upstream) forHTTP(target string) *url.URL { return u.route("http", target) }

func (u *Upstream) route(scheme, target string) *url.URL {
	if u == nil {
		return nil
	}
	p, err := u.proxy(&url.URL{Scheme: scheme, Host: target})
	if err != nil {
		return nil
	}
	return p
}

func (u *Upstream) String() string {
	if u == nil {
		return "none"
	}
	var parts []string
	if u.cfg.HTTPSProxy != "" {
		parts = append(parts, "https: "+redactString(u.cfg.HTTPSProxy))
	}
	if u.cfg.HTTPProxy != "" {
		parts = append(parts, "http: "+redactString(u.cfg.HTTPProxy))
	}
	if u.cfg.NoProxy != "" {
		parts = append(parts, "no_proxy: "+u.cfg.NoProxy)
	}
	return strings.Join(parts, ", ")
}

// redact hides a proxy URL's password: messages and logs name the proxy,
// never its credentials.
func redact(u *url.URL) string {
	if u.User == nil {
		return u.String()
	}
	c := *u
	c.User = url.User(u.User.Username())
	return c.String()
}

func redactString(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return redact(u)
	}
	if at := strings.LastIndex(s, "@"); at >= 0 {
		return "…@" + s[at+1:]
	}
	return s
}

// UpstreamError is an upstream proxy's refusal of a CONNECT.
type UpstreamError struct {
	Proxy  string // redacted URL
	Target string
	Status string // "403 Forbidden"
	Code   int
}

func (e *UpstreamError) Error() string {
	msg := fmt.Sprintf("the upstream proxy %s answered CONNECT %s with %s", e.Proxy, e.Target, e.Status)
	if e.Code == http.StatusProxyAuthRequired {
		msg += " (it wants credentials: put them in the proxy URL, http://user:password@host:port)"
	}
	return msg
}

// maxHead bounds a response head read from an upstream proxy.
const maxHead = 64 << 10

// connectVia opens a tunnel to target through the proxy at p. The
// returned connection starts with any bytes the proxy sent after its
// answer (a server that speaks first, like SSH, may already have).
func connectVia(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), p *url.URL, target string) (net.Conn, error) {
	addr := p.Host
	if p.Port() == "" {
		port := "80"
		if p.Scheme == "https" {
			port = "443"
		}
		addr = net.JoinHostPort(p.Hostname(), port)
	}
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to the upstream proxy %s: %w", redact(p), err)
	}
	c := raw
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if p.Scheme == "https" {
		tc := tls.Client(raw, &tls.Config{ServerName: p.Hostname(), MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS with the upstream proxy %s: %w", redact(p), err)
		}
		c = tc
	}
	var req strings.Builder
	fmt.Fprintf(&req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", target, target)
	if p.User != nil {
		pass, _ := p.User.Password()
		cred := base64.StdEncoding.EncodeToString([]byte(p.User.Username() + ":" + pass))
		fmt.Fprintf(&req, "Proxy-Authorization: Basic %s\r\n", cred)
	}
	req.WriteString("\r\n")
	if _, err := io.WriteString(c, req.String()); err != nil {
		c.Close()
		return nil, fmt.Errorf("talking to the upstream proxy %s: %w", redact(p), err)
	}
	head := &limitedReader{r: c, n: maxHead}
	br := bufio.NewReader(head)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading the upstream proxy %s's answer: %w", redact(p), err)
	}
	if resp.StatusCode/100 != 2 {
		c.Close()
		return nil, &UpstreamError{Proxy: redact(p), Target: target, Status: resp.Status, Code: resp.StatusCode}
	}
	_ = c.SetDeadline(time.Time{})
	out := &prefixed{Conn: c}
	if n := br.Buffered(); n > 0 {
		out.prefix, _ = br.Peek(n)
		out.prefix = append([]byte(nil), out.prefix...)
	}
	return out, nil
}

type limitedReader struct {
	r io.Reader
	n int
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("answer head larger than %d bytes", maxHead)
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}

// prefixed is a connection whose first bytes were already read.
type prefixed struct {
	net.Conn
	prefix []byte
}

func (p *prefixed) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

func (p *prefixed) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
