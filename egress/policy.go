package egress

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Mode is how a policy treats destinations no rule names.
type Mode int

const (
	// Allowlist allows only what allow rules name. The zero Mode.
	Allowlist Mode = iota
	// Open allows every public destination; non-public addresses still
	// need an address rule, and deny rules still apply.
	Open
	// Learn is Open, and records every destination so that the minimal
	// allowlist can be proposed at the end (Policy.Learned).
	Learn
)

// ParseMode reads the configuration's network mode. "none" (no network
// at all) is not a proxy mode: the launcher starts no proxy for it.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "allowlist":
		return Allowlist, nil
	case "open":
		return Open, nil
	case "learn":
		return Learn, nil
	case "none":
		return 0, fmt.Errorf(`network mode "none" needs no proxy: the launcher gives the sandbox no network`)
	}
	return 0, fmt.Errorf("network mode %q is not one of allowlist, open, learn, none", s)
}

func (m Mode) String() string {
	switch m {
	case Allowlist:
		return "allowlist"
	case Open:
		return "open"
	case Learn:
		return "learn"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// Built-in rule names, for Verdict.Rule when no configured rule decided.
const (
	RuleOpen       = `network = "open"`       // allowed: open or learn mode, public address
	RuleNotListed  = "not in the allowlist"   // refused: allowlist mode, no rule names it
	RuleNonPublic  = "non-public address"     // refused: loopback, private, link-local, …
	RuleInvalid    = "invalid destination"    // refused: not a host name or address
	RuleMethodOnly = "methods not visible"    // refused: a method-limited rule and a tunnel
	RuleUnresolved = "does not resolve"       // failed: the name has no address
	RuleScheme     = "unsupported URL scheme" // refused by CheckURL
)

// Resolver looks names up; *net.Resolver is one. Tests give their own.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Policy decides which destinations a sandbox may reach. It is safe for
// concurrent use; in Learn mode it records what it allowed.
type Policy struct {
	mode  Mode
	allow []Rule
	deny  []Rule
	learn *learner
}

// NewPolicy makes a policy. Deny rules beat allow rules.
func NewPolicy(mode Mode, allow, deny []Rule) *Policy {
	p := &Policy{mode: mode, allow: slices.Clone(allow), deny: slices.Clone(deny)}
	if mode == Learn {
		p.learn = newLearner()
	}
	return p
}

// Mode is the policy's mode.
func (p *Policy) Mode() Mode { return p.mode }

// Destination is what a client asked to reach.
type Destination struct {
	Host   string // a host name or an address, as the client wrote it ([::1] allowed)
	Port   uint16
	Method string // a plain HTTP request's method; "" for a tunnel (CONNECT, SOCKS5)
}

func (d Destination) String() string { return joinHostPort(strings.Trim(d.Host, "[]"), d.Port) }

func joinHostPort(host string, port uint16) string {
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// Verdict is a policy's answer for one destination.
type Verdict struct {
	Allowed bool
	// Target is the destination in normal form, host:port.
	Target string
	// Addrs are the checked addresses to connect to, and the only ones:
	// connecting anywhere else (a second lookup) would let DNS rebinding
	// past the check. Empty for a name left to the upstream proxy.
	Addrs []netip.Addr
	// Rule is the rule that decided, as written, or a built-in Rule* name;
	// RuleSource is where a configured rule was written.
	Rule, RuleSource string
	// Reason is one sentence for a person (refusals and failures).
	Reason string
	// Fix is a rule that would allow the destination ("" when adding a
	// rule would not: a deny rule decided, or the destination is invalid).
	Fix string
	// MethodsOnly is set on a tunnel refused only because the rule that
	// would allow it is limited to these methods, which the proxy cannot
	// see inside a tunnel: an Interceptor that sees each request may take
	// it over (Tunnel.AllowsMethod).
	MethodsOnly []string
	// Failed marks an answer that is no decision: the name does not resolve.
	Failed bool

	name   string // the normal name ("" for an address destination)
	port   uint16
	method string
}

// Check decides d, resolving a name through r. A name is resolved only
// when some rule (or the mode) could allow it, so a refused name never
// reaches DNS, where it could carry data out.
func (p *Policy) Check(ctx context.Context, d Destination, r Resolver) Verdict {
	return p.check(ctx, d, r, false)
}

// check: with upstreamResolves, a name that does not resolve here is
// allowed by name (an upstream proxy of a corporate network resolves
// names this host cannot).
func (p *Policy) check(ctx context.Context, d Destination, r Resolver, upstreamResolves bool) Verdict {
	v := p.decide(ctx, d, r, upstreamResolves)
	if p.learn != nil && !v.Failed {
		p.learn.record(v)
	}
	return v
}

func (p *Policy) decide(ctx context.Context, d Destination, r Resolver, upstreamResolves bool) Verdict {
	v := Verdict{port: d.Port, method: d.Method}
	name, addr, err := normalizeHost(d.Host)
	if err != nil {
		v.Target = d.String()
		return v.refuse(RuleInvalid, "", err.Error()+".", "")
	}
	v.name = name
	if name != "" {
		v.Target = joinHostPort(name, d.Port)
	} else {
		v.Target = joinHostPort(addr.String(), d.Port)
	}
	if d.Port == 0 {
		return v.refuse(RuleInvalid, "", "port 0 is not a destination.", "")
	}

	if name != "" {
		for _, rule := range p.deny {
			if rule.matchName(name) && rule.matchPort(d.Port) && denyMatchesMethod(rule, d.Method) {
				return v.refuse(rule.Text, rule.Source, "the deny rule "+rule.describe()+" refuses it"+tunnelNote(rule, d.Method)+".", "")
			}
		}
	}

	// The name's grant: the rule (or the mode) that allows the name, and
	// the methods it is limited to when the proxy cannot see them.
	var byName *grant
	switch {
	case p.mode != Allowlist:
		byName = &grant{rule: &Rule{Text: RuleOpen}}
	case name != "":
		byName = matchGrant(p.allow, d, func(r Rule) bool { return r.matchName(name) })
		if byName == nil {
			return v.refuse(RuleNotListed, "", v.Target+" is not in the sandbox's network allowlist.", v.Target)
		}
	}

	var addrs []netip.Addr
	if name == "" {
		addrs = []netip.Addr{addr}
	} else {
		found, err := r.LookupNetIP(ctx, "ip", name)
		if err != nil || len(found) == 0 {
			if upstreamResolves && byName.methods == nil && ctx.Err() == nil {
				v.Allowed, v.Rule, v.RuleSource = true, byName.rule.Text, byName.rule.Source
				v.Reason = name + " does not resolve here; the upstream proxy resolves it."
				return v
			}
			v.Failed = true
			v.Rule = RuleUnresolved
			v.Reason = name + " does not resolve"
			if err != nil {
				v.Reason += ": " + lookupError(err)
			}
			v.Reason += "."
			return v
		}
		for _, a := range found {
			if a = a.Unmap(); !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}

	// Every address is checked on its own, and only those that pass are
	// connected to: those granted every method if any are, else those
	// granted the methods every such address shares.
	var first *Verdict
	var full, limited []netip.Addr
	var fullBy, limitedBy *Rule
	var methods []string
	for _, a := range addrs {
		g, refusal := p.checkAddr(a, d, name, byName)
		switch {
		case refusal != nil:
			if first == nil {
				first = refusal
			}
		case g.methods == nil:
			if fullBy == nil {
				fullBy = g.rule
			}
			full = append(full, a)
		default:
			if limitedBy == nil {
				limitedBy, methods = g.rule, g.methods
			} else if m := intersectMethods(methods, g.methods); m != nil {
				methods = m
			} else {
				continue // no method in common with the addresses before it
			}
			limited = append(limited, a)
		}
	}
	switch {
	case full != nil:
		v.Allowed, v.Addrs, v.Rule, v.RuleSource = true, full, fullBy.Text, fullBy.Source
		return v
	case limited != nil:
		v = v.refuse(RuleMethodOnly, "", fmt.Sprintf("%s is allowed only for %s, and the proxy cannot see the methods of requests inside an encrypted tunnel.",
			v.Target, strings.Join(methods, ", ")), v.Target)
		v.MethodsOnly, v.Addrs = methods, limited
		return v
	}
	return v.refuse(first.Rule, first.RuleSource, first.Reason, first.Fix)
}

// grant is what a rule (or the mode) allows: every method (methods nil),
// or, for a tunnel, only these methods (which the proxy cannot see).
type grant struct {
	rule    *Rule
	methods []string
}

// matchGrant finds the allow rules that match d where match says so: the
// first that allows d's method, or, for a tunnel, the methods that
// method-limited ones allow. nil when none matches.
func matchGrant(allow []Rule, d Destination, match func(Rule) bool) *grant {
	var limited *grant
	for i, r := range allow {
		if !match(r) || !r.matchPort(d.Port) {
			continue
		}
		if r.matchMethod(d.Method) {
			return &grant{rule: &allow[i]}
		}
		if d.Method == "" {
			if limited == nil {
				limited = &grant{rule: &allow[i]}
			}
			limited.methods = mergeMethods(limited.methods, r.methods)
		}
	}
	return limited
}

// checkAddr decides one address of d, given the name's grant (nil for an
// address destination in allowlist mode). An address rule opens a
// non-public address; a name needs its own grant as well, and the
// methods allowed are those both allow.
func (p *Policy) checkAddr(a netip.Addr, d Destination, name string, byName *grant) (*grant, *Verdict) {
	target := joinHostPort(a.String(), d.Port)
	for _, rule := range p.deny {
		if rule.matchAddr(a) && rule.matchPort(d.Port) && denyMatchesMethod(rule, d.Method) {
			return nil, &Verdict{Rule: rule.Text, RuleSource: rule.Source,
				Reason: describeAddr(name, a) + ": the deny rule " + rule.describe() + " refuses it" + tunnelNote(rule, d.Method) + "."}
		}
	}
	byAddr := matchGrant(p.allow, d, func(r Rule) bool { return r.matchAddr(a) })
	switch {
	case byAddr == nil && nonPublic(a) != "":
		return nil, &Verdict{Rule: RuleNonPublic, Fix: target,
			Reason: describeAddr(name, a) + " a " + nonPublic(a) + " address: only a rule naming the address opens it."}
	case byAddr == nil && byName == nil:
		return nil, &Verdict{Rule: RuleNotListed, Fix: target, Reason: target + " is not in the sandbox's network allowlist."}
	case byAddr == nil:
		return byName, nil
	case byName == nil || byName.methods == nil:
		return byAddr, nil
	case byAddr.methods == nil:
		return &grant{rule: byAddr.rule, methods: byName.methods}, nil
	}
	if m := intersectMethods(byName.methods, byAddr.methods); m != nil {
		return &grant{rule: byAddr.rule, methods: m}, nil
	}
	return nil, &Verdict{Rule: RuleMethodOnly, Fix: target,
		Reason: fmt.Sprintf("the rules for %s (%s) and for %s (%s) share no method.", name, strings.Join(byName.methods, ","), a, strings.Join(byAddr.methods, ","))}
}

func intersectMethods(a, b []string) []string {
	var out []string
	for _, m := range a {
		if slices.Contains(b, m) {
			out = append(out, m)
		}
	}
	return out
}

func describeAddr(name string, a netip.Addr) string {
	if name == "" {
		return a.String() + " is"
	}
	return name + " resolves to " + a.String() + ","
}

func (v Verdict) refuse(rule, source, reason, fix string) Verdict {
	v.Allowed, v.Addrs = false, nil
	v.Rule, v.RuleSource, v.Reason, v.Fix = rule, source, reason, fix
	return v
}

// denyMatchesMethod: a deny rule limited to methods refuses a tunnel
// whole, since the proxy cannot see what the tunnel carries.
func denyMatchesMethod(r Rule, method string) bool {
	return r.methods == nil || method == "" || slices.Contains(r.methods, method)
}

func tunnelNote(r Rule, method string) string {
	if r.methods != nil && method == "" {
		return " (it names methods, and the proxy cannot see the methods inside an encrypted tunnel, so the whole tunnel is refused)"
	}
	return ""
}

func mergeMethods(a, b []string) []string {
	for _, m := range b {
		if !slices.Contains(a, m) {
			a = append(a, m)
		}
	}
	slices.Sort(a)
	return a
}

// lookupError shortens a resolver error to what a person needs.
func lookupError(err error) string {
	if de, ok := err.(*net.DNSError); ok {
		switch {
		case de.IsNotFound:
			return "no such host"
		case de.IsTimeout:
			return "the lookup timed out"
		}
		return de.Err
	}
	return err.Error()
}

// normalizeHost reads a destination's host: an address (brackets,
// IPv4-mapped forms and all, becomes the plain address) or a name in the
// form rules are compared in.
func normalizeHost(h string) (name string, addr netip.Addr, err error) {
	if inner, ok := strings.CutPrefix(h, "["); ok {
		inner, ok = strings.CutSuffix(inner, "]")
		if !ok {
			return "", netip.Addr{}, fmt.Errorf("%q is not a host", h)
		}
		h = inner
	}
	if a, err := netip.ParseAddr(h); err == nil {
		if a.Zone() != "" {
			return "", netip.Addr{}, fmt.Errorf("%q is a scoped address, which the proxy does not reach", h)
		}
		return "", a.Unmap(), nil
	}
	if looksLikeAddress(h) {
		return "", netip.Addr{}, fmt.Errorf("%q is not an address", h)
	}
	name, err = normalizeName(h)
	return name, netip.Addr{}, err
}

// FixLine is the configuration line that adds rule to the allow list,
// as a person would paste it into claude-sandbox.toml.
func FixLine(rule string) string { return "allow = [" + strconv.Quote(rule) + "]" }

// CheckURL answers for the Nix daemon gateway whether a fixed-output
// derivation may fetch u. The host's Nix daemon fetches it, not the
// proxy, so nothing is resolved here: a name is judged by name rules (a
// GET), an address literal by address rules and the non-public ranges,
// and names that mean loopback (localhost, *.localhost) are refused.
func (p *Policy) CheckURL(u string) Verdict {
	v := Verdict{method: "GET"}
	parsed, err := url.Parse(u)
	if err != nil || parsed.Host == "" {
		v.Target = u
		return v.refuse(RuleInvalid, "", fmt.Sprintf("%q is not a URL with a host.", u), "")
	}
	var defaultPort uint16
	switch parsed.Scheme {
	case "http":
		defaultPort = 80
	case "https":
		defaultPort = 443
	case "ftp":
		defaultPort = 21
	default:
		v.Target = parsed.Host
		return v.refuse(RuleScheme, "", fmt.Sprintf("%s: URLs with scheme %q cannot be checked; only http, https and ftp.", u, parsed.Scheme), "")
	}
	d := Destination{Host: parsed.Hostname(), Port: defaultPort, Method: "GET"}
	if ps := parsed.Port(); ps != "" {
		port, err := parsePort(ps)
		if err != nil {
			v.Target = parsed.Host
			return v.refuse(RuleInvalid, "", err.Error()+".", "")
		}
		d.Port = port
	}
	if name, _, err := normalizeHost(d.Host); err == nil && (name == "localhost" || strings.HasSuffix(name, ".localhost")) {
		v.Target = joinHostPort(name, d.Port)
		return v.refuse(RuleNonPublic, "", name+" is this machine (loopback): a fetch from the host's Nix daemon would reach the host's own services.", "")
	}
	res := p.decide(context.Background(), d, noResolver{}, true)
	if res.Allowed && res.Addrs == nil {
		res.Reason = "" // "resolved by the upstream proxy" means nothing here
	}
	if p.learn != nil && !res.Failed {
		p.learn.record(res)
	}
	return res
}

// AllowURL is CheckURL's answer and the rule that decided it.
func (p *Policy) AllowURL(u string) (bool, string) {
	v := p.CheckURL(u)
	return v.Allowed, v.Rule
}

// noResolver resolves nothing: CheckURL judges names by name only.
type noResolver struct{}

func (noResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return nil, &net.DNSError{Err: "not resolved", IsNotFound: true}
}
