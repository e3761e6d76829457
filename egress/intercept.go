package egress

import (
	"context"
	"net"
	"slices"
)

// Tunnel is an allowed CONNECT or SOCKS5 request offered to an
// Interceptor before the proxy connects it.
type Tunnel struct {
	// Op is "CONNECT" or "socks5".
	Op string
	// Verdict is the policy's answer; Verdict.Target is the destination in
	// normal form. A verdict with MethodsOnly set is refused unless an
	// Interceptor takes the tunnel, and the interceptor must then check
	// every request's method with AllowsMethod.
	Verdict Verdict

	dial func(ctx context.Context) (net.Conn, error)
}

// Dial connects to the destination as the proxy would: to the checked
// addresses only, or through the upstream proxy.
func (t *Tunnel) Dial(ctx context.Context) (net.Conn, error) { return t.dial(ctx) }

// AllowsMethod says whether a request with this method may go through
// the tunnel (every method, unless the rule that allowed it names some).
func (t *Tunnel) AllowsMethod(method string) bool {
	if t.Verdict.MethodsOnly == nil {
		return t.Verdict.Allowed
	}
	return slices.Contains(t.Verdict.MethodsOnly, method)
}

// Interceptor is consulted for every allowed tunnel (and every tunnel
// refused only for methods the proxy cannot see). It returns nil to leave
// the tunnel to the proxy, or a handler that takes the client's
// connection over: the client has been told the tunnel is open, and the
// handler serves it (terminating TLS, say) until it returns; the proxy
// then closes the client's connection. ctx ends when the server closes.
//
// The credential broker uses it to terminate TLS for the hosts a secret
// is bound to; it must be quick to decide, since the client waits.
type Interceptor func(t *Tunnel) TunnelHandler

// TunnelHandler serves one intercepted tunnel.
type TunnelHandler func(ctx context.Context, client net.Conn) error
