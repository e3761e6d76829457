package secrets

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// HostPattern is one entry of a secret's hosts: a host name, a "*." and a
// domain (names strictly below it, as the egress allowlist reads it), or
// an address; with an optional :port. Without a port it means 443: a
// secret is only ever put into TLS the proxy terminates, never into
// plain HTTP.
type HostPattern struct {
	Text     string
	name     string // lower case, no trailing dot, without "*."
	wildcard bool
	addr     netip.Addr
	port     int
}

// defaultPort is the port of a pattern without one.
const defaultPort = 443

// ParseHost parses one hosts entry. A wildcard over a public suffix
// ("*.co.uk") parses: the public suffix list lives with the proxy's rules
// (egress, which the launcher does not link), and a launch asks it there
// (launch.CheckRules, WildcardDomain).
func ParseHost(text string) (HostPattern, error) {
	p := HostPattern{Text: strings.TrimSpace(text), port: defaultPort}
	s := p.Text
	if s == "" {
		return p, fmt.Errorf("empty host")
	}
	if strings.Contains(s, "://") || strings.Contains(s, "/") {
		return p, fmt.Errorf("%q: a host name, not a URL (write api.example.com)", text)
	}
	host, port := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		inner, after, ok := strings.Cut(s[1:], "]")
		if !ok || (after != "" && !strings.HasPrefix(after, ":")) {
			return p, fmt.Errorf("%q: write an IPv6 address as [::1] or [::1]:8443", text)
		}
		host, port = inner, strings.TrimPrefix(after, ":")
		if after != "" && port == "" {
			return p, fmt.Errorf("%q: no port after the colon", text)
		}
	case strings.Count(s, ":") == 1:
		host, port, _ = strings.Cut(s, ":")
		if port == "" {
			return p, fmt.Errorf("%q: no port after the colon", text)
		}
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || port[0] == '+' || port[0] == '0' {
			return p, fmt.Errorf("%q: port %q is not a number from 1 to 65535", text, port)
		}
		p.port = n
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return p, fmt.Errorf("%q: an address with a zone cannot be a secret's host", text)
		}
		p.addr = a.Unmap()
		return p, nil
	}
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		p.wildcard = true
		host = rest
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if err := checkName(name); err != nil {
		return p, fmt.Errorf("%q: %v", text, err)
	}
	p.name = name
	return p, nil
}

// checkName accepts ASCII host names (internationalised names in their
// xn-- form): a secret's host is matched against the name a client asks
// the proxy for, which is ASCII on the wire.
func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("no host name")
	}
	if strings.Contains(name, "*") {
		return fmt.Errorf(`a wildcard is a leading "*." only, as in "*.github.com"`)
	}
	if len(name) > 253 {
		return fmt.Errorf("longer than a host name can be")
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("not a host name (empty or over-long label)")
		}
		for i, r := range label {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
			case r == '-' && i > 0 && i < len(label)-1:
			default:
				return fmt.Errorf("not a host name (%q); write internationalised names in their xn-- form", r)
			}
		}
	}
	return nil
}

// Host is the pattern without its port: a name, "*." and a domain, or
// an address.
func (p HostPattern) Host() string {
	switch {
	case p.addr.IsValid():
		return p.addr.String()
	case p.wildcard:
		return "*." + p.name
	}
	return p.name
}

// Port is the pattern's port (443 unless written).
func (p HostPattern) Port() int { return p.port }

// Matches says whether a request to host:port may carry the secret. host
// is what the client asked for (a name or an address literal).
func (p HostPattern) Matches(host string, port int) bool {
	if port != p.port {
		return false
	}
	host = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSuffix(host, "]"), "["), ".")
	if p.addr.IsValid() {
		a, err := netip.ParseAddr(host)
		return err == nil && a.Unmap() == p.addr
	}
	host = strings.ToLower(host)
	if p.wildcard {
		return strings.HasSuffix(host, "."+p.name)
	}
	return host == p.name
}

// covers says whether every request q matches is also matched by p (so a
// project naming q where the user named p widens nothing).
func (p HostPattern) covers(q HostPattern) bool {
	if p.port != q.port {
		return false
	}
	if p.addr.IsValid() || q.addr.IsValid() {
		return p.addr == q.addr
	}
	switch {
	case p.wildcard && q.wildcard:
		return q.name == p.name || strings.HasSuffix(q.name, "."+p.name)
	case p.wildcard:
		return strings.HasSuffix(q.name, "."+p.name)
	case q.wildcard:
		return false
	}
	return p.name == q.name
}

// WildcardDomain is the domain a "*." pattern covers the names below.
func (p HostPattern) WildcardDomain() (string, bool) { return p.name, p.wildcard }
