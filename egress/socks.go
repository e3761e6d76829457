package egress

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// SOCKS5 (RFC 1928), the part clients use: no authentication, CONNECT,
// IPv4, IPv6 and domain-name destinations. A domain name is resolved
// here, by the policy, so socks5h:// and `nc -X 5` (which pass names)
// work from a sandbox that has no DNS of its own.
const (
	socksVersion   = 5
	socksNoAuth    = 0x00
	socksNoMethods = 0xff

	socksConnect = 1

	socksIPv4   = 1
	socksDomain = 3
	socksIPv6   = 4

	socksSucceeded          = 0x00
	socksGeneralFailure     = 0x01
	socksNotAllowed         = 0x02 // connection not allowed by ruleset
	socksNetworkUnreachable = 0x03
	socksHostUnreachable    = 0x04
	socksConnRefused        = 0x05
	socksTTLExpired         = 0x06
	socksCmdNotSupported    = 0x07
	socksAddrNotSupported   = 0x08
)

// serveSOCKS5 handles a connection whose first byte (the version) has
// been read.
func (s *Server) serveSOCKS5(c *conn) {
	_ = c.SetDeadline(time.Now().Add(s.t.Handshake))
	var buf [2 + 255]byte
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return
	}
	methods := buf[:buf[0]]
	if _, err := io.ReadFull(c, methods); err != nil {
		return
	}
	hasNoAuth := false
	for _, m := range methods {
		hasNoAuth = hasNoAuth || m == socksNoAuth
	}
	if !hasNoAuth {
		c.Write([]byte{socksVersion, socksNoMethods})
		s.log.Log(sessionlog.Entry{Service: "net", Decision: sessionlog.Refuse, Op: "socks5",
			Reason: "the SOCKS5 client offers no method without authentication; the proxy needs none."})
		s.refused.Add(1)
		return
	}
	if _, err := c.Write([]byte{socksVersion, socksNoAuth}); err != nil {
		return
	}

	var head [4]byte // version, command, reserved, address type
	if _, err := io.ReadFull(c, head[:]); err != nil || head[0] != socksVersion {
		return
	}
	var host string
	switch head[3] {
	case socksIPv4:
		var a [4]byte
		if _, err := io.ReadFull(c, a[:]); err != nil {
			return
		}
		host = netip.AddrFrom4(a).String()
	case socksIPv6:
		var a [16]byte
		if _, err := io.ReadFull(c, a[:]); err != nil {
			return
		}
		host = netip.AddrFrom16(a).String()
	case socksDomain:
		if _, err := io.ReadFull(c, buf[:1]); err != nil {
			return
		}
		name := buf[1 : 1+int(buf[0])]
		if _, err := io.ReadFull(c, name); err != nil {
			return
		}
		host = string(name)
	default:
		socksReply(c, socksAddrNotSupported)
		return
	}
	var pb [2]byte
	if _, err := io.ReadFull(c, pb[:]); err != nil {
		return
	}
	d := Destination{Host: host, Port: binary.BigEndian.Uint16(pb[:])}
	if head[1] != socksConnect {
		// BIND and UDP ASSOCIATE would open the sandbox to inbound
		// connections and to datagrams the policy does not see.
		s.refused.Add(1)
		s.log.Log(sessionlog.Entry{Service: "net", Decision: sessionlog.Refuse, Op: "socks5", Target: d.String(),
			Reason: "SOCKS5 command " + socksCommand(head[1]) + " is not supported; only CONNECT."})
		socksReply(c, socksCmdNotSupported)
		return
	}

	rt := s.check(s.ctx, "socks5", d, s.opts.Upstream.forTunnel)
	if !rt.v.Allowed && rt.v.MethodsOnly == nil {
		code := byte(socksNotAllowed)
		if rt.v.Failed {
			code = socksHostUnreachable
		}
		socksReply(c, code)
		return
	}
	s.tunnel("socks5", rt, func(err error) *conn {
		if err != nil {
			socksReply(c, socksErrorCode(err))
			return nil
		}
		if socksReply(c, socksSucceeded) != nil {
			return nil
		}
		_ = c.SetDeadline(time.Time{})
		return c
	})
}

// socksReply answers a request. The bound address is left zero: the
// client has no use for the host's address, and is not told it.
func socksReply(c *conn, code byte) error {
	_, err := c.Write([]byte{socksVersion, code, 0, socksIPv4, 0, 0, 0, 0, 0, 0})
	return err
}

func socksErrorCode(err error) byte {
	var rf *refusal
	var ue *UpstreamError
	switch {
	case errors.As(err, &rf):
		return socksNotAllowed
	case errors.As(err, &ue):
		if ue.Code == 403 {
			return socksNotAllowed
		}
		return socksGeneralFailure
	case errors.Is(err, syscall.ECONNREFUSED):
		return socksConnRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return socksNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH):
		return socksHostUnreachable
	case isTimeout(err), errors.Is(err, context.DeadlineExceeded):
		return socksTTLExpired
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return socksTTLExpired
	}
	return socksGeneralFailure
}

func socksCommand(b byte) string {
	switch b {
	case 2:
		return "BIND"
	case 3:
		return "UDP ASSOCIATE"
	}
	return "0x" + string("0123456789abcdef"[b>>4]) + string("0123456789abcdef"[b&15])
}

// refuseSOCKS4 answers a SOCKS4 request: "request rejected". SOCKS4
// cannot carry IPv6 and SOCKS4a is rare; clients that speak it speak
// SOCKS5 too.
func (s *Server) refuseSOCKS4(c *conn) {
	_ = c.SetDeadline(time.Now().Add(s.t.Handshake))
	s.refused.Add(1)
	s.log.Log(sessionlog.Entry{Service: "net", Decision: sessionlog.Refuse, Op: "socks4",
		Reason: "SOCKS4 is not supported: use SOCKS5 (socks5h://, nc -X 5)."})
	c.Write([]byte{0, 0x5b, 0, 0, 0, 0, 0, 0})
}
