package egress

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// Rule is one entry of an allow or deny list, parsed from the text users
// write in claude-sandbox.toml:
//
//	api.anthropic.com                the web ports, 80 and 443
//	*.github.com:443                 names below github.com (not github.com itself), port 443
//	github.com:22                    one port
//	example.com:8000-8999            a range
//	example.com:80,8080              a list
//	example.com:*                    every port
//	registry.npmjs.org GET,HEAD      only these methods (plain HTTP; see Methods)
//	10.0.0.5:5432                    an address
//	192.168.1.0/24:8080              a network
//	[::1]:3000  [fd00::/8]:443  ::1  IPv6: brackets when a port follows
//
// A name rule matches by name, before any lookup; an address rule matches
// the address a destination resolves to (or names), and is the only kind
// of rule that opens a non-public address.
type Rule struct {
	// Text is the rule as written, trimmed.
	Text string
	// Source says where it was written ("claude-sandbox.toml:7"). The
	// caller sets it; messages about the rule show it.
	Source string

	name     string       // lower-case ASCII (IDN in punycode), no trailing dot, no "*."
	wildcard bool         // "*.name" matches names strictly below name
	prefix   netip.Prefix // address rules (a single address is a /32 or /128)
	anyPort  bool
	ports    []portRange // nil and !anyPort: the web ports
	methods  []string    // upper case, sorted; nil: every method
}

type portRange struct{ lo, hi uint16 }

// webPorts are what a rule without a port allows: the ports a host name
// without one is reached on by the tools in a sandbox (http and https).
var webPorts = [...]uint16{80, 443}

// RuleError is a rule that cannot be parsed. Its text names the rule as
// written and what is wrong with it; the caller adds the file and line.
type RuleError struct {
	Rule string
	Msg  string
	hint string
}

func (e *RuleError) Error() string { return fmt.Sprintf("network rule %q: %s", e.Rule, e.Msg) }

// Hint is a one-line suggestion (may be empty).
func (e *RuleError) Hint() string { return e.hint }

// ParseRule parses one rule.
func ParseRule(text string) (Rule, error) {
	r := Rule{Text: strings.TrimSpace(text)}
	bad := func(hint, format string, args ...any) (Rule, error) {
		return Rule{}, &RuleError{Rule: text, Msg: fmt.Sprintf(format, args...), hint: hint}
	}
	if r.Text == "" {
		return bad(`a rule names a host or an address, e.g. "api.anthropic.com" or "10.0.0.5:5432"`, "empty")
	}
	if strings.Contains(r.Text, "://") {
		return bad(`write "example.com" or "example.com:8080"`, "a rule names a host, not a URL")
	}
	fields := strings.Fields(r.Text)
	target := fields[0]
	if len(fields) > 1 {
		ms, err := parseMethods(strings.Join(fields[1:], ","))
		if err != nil {
			return bad(`methods follow the host after a space, separated by commas: "registry.npmjs.org GET,HEAD"`, "%s", err)
		}
		r.methods = ms
	}
	host, ports, err := splitTarget(target)
	if err != nil {
		return bad(`write host, host:port, address:port or [IPv6]:port`, "%s", err)
	}
	if ports != nil {
		if err := r.parsePorts(*ports); err != nil {
			return bad(`ports: 443, 8000-8999, 80,8080, or * for every port; no port means 80 and 443`, "%s", err)
		}
	}
	if looksLikeAddress(host) {
		p, err := parseAddressOrPrefix(host)
		if err != nil {
			return bad(`addresses are written in full: 127.0.0.1, 10.0.0.0/8, [::1]`, "%s", err)
		}
		r.prefix = p
		return r, nil
	}
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		r.wildcard = true
		host = rest
	}
	if strings.Contains(host, "*") {
		if host == "*" && !r.wildcard {
			return bad(`to allow every public host use network = "open"`, "a lone * is not a rule")
		}
		return bad(`a wildcard is a leading "*." only: "*.github.com"`, "%q: * may only stand for the leading labels", host)
	}
	name, err := normalizeName(host)
	if err != nil {
		return bad(`write a host name such as "api.anthropic.com"`, "%s", err)
	}
	if r.wildcard && IsPublicSuffix(name) {
		return bad(`name a domain someone owns: "*.example.com", not "*.com"`, "*.%s would match every domain under the public suffix %q", name, name)
	}
	r.name = name
	return r, nil
}

// ParseRules parses a list; the error names the first bad rule.
func ParseRules(texts []string) ([]Rule, error) {
	out := make([]Rule, 0, len(texts))
	for _, t := range texts {
		r, err := ParseRule(t)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// splitTarget separates host and ports. ports is nil when none is written.
func splitTarget(t string) (host string, ports *string, err error) {
	if t == "" {
		return "", nil, fmt.Errorf("no host")
	}
	if rest, ok := strings.CutPrefix(t, "["); ok {
		inner, after, ok := strings.Cut(rest, "]")
		if !ok {
			return "", nil, fmt.Errorf("%q: [ without ]", t)
		}
		if after == "" {
			return inner, nil, nil
		}
		p, ok := strings.CutPrefix(after, ":")
		if !ok {
			return "", nil, fmt.Errorf("%q: only :port may follow ]", t)
		}
		if !looksLikeAddress(inner) || !strings.Contains(inner, ":") {
			return "", nil, fmt.Errorf("%q: brackets hold an IPv6 address", t)
		}
		return inner, &p, nil
	}
	if strings.Count(t, ":") > 1 {
		// A bare IPv6 address or network: it takes no port (write
		// [::1]:3000), since ::1:3000 is itself an address.
		return t, nil, nil
	}
	if h, p, ok := strings.Cut(t, ":"); ok {
		return h, &p, nil
	}
	return t, nil, nil
}

func (r *Rule) parsePorts(s string) error {
	if s == "*" {
		r.anyPort = true
		return nil
	}
	if s == "" {
		return fmt.Errorf("no port after the colon")
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := parsePort(lo)
		if err != nil {
			return err
		}
		b := a
		if isRange {
			if b, err = parsePort(hi); err != nil {
				return err
			}
			if b < a {
				return fmt.Errorf("port range %s runs backwards", part)
			}
		}
		r.ports = append(r.ports, portRange{a, b})
	}
	return nil
}

// parsePort accepts decimal digits only (no sign, no 0x, no spaces).
func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a port number", s)
	}
	n, _ := strconv.Atoi(s)
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %s is out of range (1-65535)", s)
	}
	return uint16(n), nil
}

func parseMethods(s string) ([]string, error) {
	var out []string
	for _, m := range strings.Split(s, ",") {
		m = strings.ToUpper(m)
		if m == "" {
			continue // "GET, HEAD" arrives as GET,,HEAD
		}
		if strings.Trim(m, "ABCDEFGHIJKLMNOPQRSTUVWXYZ-_") != "" || len(m) > 32 {
			return nil, fmt.Errorf("%q is not an HTTP method", m)
		}
		if m == "CONNECT" {
			return nil, fmt.Errorf("CONNECT is how a tunnel starts, not a method a rule can limit: a rule without methods allows tunnels")
		}
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no method after the host")
	}
	slices.Sort(out)
	return out, nil
}

// looksLikeAddress tells an address (or network) from a name: it contains
// a colon (IPv6) or a slash, or it is digits and dots with exactly three
// dots. Everything else is taken as a name, and normalizeName refuses the
// numeric forms that inet_aton would read as addresses (127.1, 0x7f.1).
func looksLikeAddress(s string) bool {
	if strings.ContainsAny(s, ":/") {
		return true
	}
	return strings.Count(s, ".") == 3 && strings.Trim(s, "0123456789.") == ""
}

func parseAddressOrPrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "%") {
		return netip.Prefix{}, fmt.Errorf("%q: scoped (zoned) addresses cannot be reached through the proxy", s)
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address/prefix-length network", s)
		}
		if p != p.Masked() {
			return netip.Prefix{}, fmt.Errorf("%s has bits set past its prefix length: did you mean %s?", s, p.Masked())
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		if p.Bits() == 0 {
			return netip.Prefix{}, fmt.Errorf("%s matches every address, the private ones included", s)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// normalizeName returns the form a name is compared in: lower case, ASCII
// (an IDN in punycode), without the trailing dot of a fully qualified
// name. It refuses what is not a host name, and the all-numeric or hex
// forms (127.1, 0x7f.1, 2130706433) that resolvers read as addresses.
func normalizeName(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("no host name")
	}
	if strings.HasSuffix(s, ".") {
		s = s[:len(s)-1]
		if s == "" || strings.HasSuffix(s, ".") {
			return "", fmt.Errorf("%q: empty label", s+".")
		}
	}
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			a, err := idna.Lookup.ToASCII(s)
			if err != nil {
				return "", fmt.Errorf("%q is not a valid internationalised domain name", s)
			}
			s = a
			break
		}
	}
	s = strings.ToLower(s)
	if len(s) > 253 {
		return "", fmt.Errorf("host name longer than 253 characters")
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if l == "" {
			return "", fmt.Errorf("%q: empty label", s)
		}
		if len(l) > 63 {
			return "", fmt.Errorf("%q: a label is longer than 63 characters", s)
		}
		if strings.Trim(l, "abcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			return "", fmt.Errorf("%q is not a host name (letters, digits, - and _ only)", s)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "", fmt.Errorf("%q: a label starts or ends with -", s)
		}
	}
	last := labels[len(labels)-1]
	if strings.Trim(last, "0123456789") == "" || (strings.HasPrefix(last, "0x") && strings.Trim(last[2:], "0123456789abcdef") == "") {
		return "", fmt.Errorf("%q is an address in a non-standard form (resolvers read 127.1 as 127.0.0.1): write the address in full, e.g. 127.0.0.1", s)
	}
	return s, nil
}

// String is the rule in its normal form: punycode, lower case, the
// address rather than a /32, methods upper case and sorted.
func (r Rule) String() string {
	var b strings.Builder
	switch {
	case r.name != "":
		if r.wildcard {
			b.WriteString("*.")
		}
		b.WriteString(r.name)
	case r.prefix.IsSingleIP():
		a := r.prefix.Addr()
		if a.Is6() && r.hasPorts() {
			b.WriteString("[" + a.String() + "]")
		} else {
			b.WriteString(a.String())
		}
	default:
		if r.prefix.Addr().Is6() && r.hasPorts() {
			b.WriteString("[" + r.prefix.String() + "]")
		} else {
			b.WriteString(r.prefix.String())
		}
	}
	if r.hasPorts() {
		b.WriteString(":")
		if r.anyPort {
			b.WriteString("*")
		}
		for i, p := range r.ports {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(strconv.Itoa(int(p.lo)))
			if p.hi != p.lo {
				b.WriteString("-" + strconv.Itoa(int(p.hi)))
			}
		}
	}
	if r.methods != nil {
		b.WriteString(" " + strings.Join(r.methods, ","))
	}
	return b.String()
}

func (r Rule) hasPorts() bool { return r.anyPort || r.ports != nil }

// IsAddress reports whether the rule names addresses rather than a host name.
func (r Rule) IsAddress() bool { return r.name == "" }

// Methods are the HTTP methods the rule is limited to (nil: every method).
// The proxy sees methods only in plain HTTP requests: inside a CONNECT or
// SOCKS5 tunnel they are encrypted, so a rule limited to methods does not
// allow a tunnel unless an Interceptor takes it over and checks each
// request; a deny rule limited to methods refuses the whole tunnel.
func (r Rule) Methods() []string { return slices.Clone(r.methods) }

// describe is the rule for messages: its text and where it was written.
func (r Rule) describe() string {
	if r.Source != "" {
		return fmt.Sprintf("%q (%s)", r.Text, r.Source)
	}
	return fmt.Sprintf("%q", r.Text)
}

func (r Rule) matchName(name string) bool {
	if r.name == "" || name == "" {
		return false
	}
	if r.wildcard {
		return len(name) > len(r.name) && strings.HasSuffix(name, r.name) && name[len(name)-len(r.name)-1] == '.'
	}
	return name == r.name
}

func (r Rule) matchAddr(a netip.Addr) bool {
	return r.name == "" && r.prefix.Contains(a.Unmap())
}

func (r Rule) matchPort(p uint16) bool {
	switch {
	case r.anyPort:
		return true
	case r.ports == nil:
		return slices.Contains(webPorts[:], p)
	}
	for _, pr := range r.ports {
		if pr.lo <= p && p <= pr.hi {
			return true
		}
	}
	return false
}

// matchMethod: method "" is a tunnel, whose requests the proxy cannot see.
func (r Rule) matchMethod(method string) bool {
	return r.methods == nil || (method != "" && slices.Contains(r.methods, method))
}

// IsPublicSuffix says whether a lower-case name is a public suffix (com,
// co.uk, a private suffix without a dot such as localhost): "*." before
// it would name every domain below it, owned by anyone.
func IsPublicSuffix(name string) bool {
	suffix, icann := publicsuffix.PublicSuffix(name)
	return suffix == name && (icann || !strings.Contains(name, "."))
}
