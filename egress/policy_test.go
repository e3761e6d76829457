package egress

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
)

// fakeResolver answers from a table and counts lookups, so a test can
// tell that a refused name never reached DNS.
type fakeResolver struct {
	mu      sync.Mutex
	answers map[string][]string
	asked   []string
}

func newResolver(answers map[string][]string) *fakeResolver {
	return &fakeResolver{answers: answers}
}

func (f *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, host)
	as, ok := f.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	out := make([]netip.Addr, len(as))
	for i, a := range as {
		out[i] = netip.MustParseAddr(a)
	}
	return out, nil
}

func (f *fakeResolver) lookups() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.asked)
}

func mustRules(t testing.TB, texts ...string) []Rule {
	t.Helper()
	rs, err := ParseRules(texts)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

var testDNS = map[string][]string{
	"api.anthropic.com":     {"160.79.104.10"},
	"github.com":            {"140.82.121.4"},
	"api.github.com":        {"140.82.121.6"},
	"registry.npmjs.org":    {"104.16.0.35"},
	"evil.example.com":      {"93.184.216.34"},
	"rebind.example.com":    {"127.0.0.1"},
	"metadata.example":      {"169.254.169.254"},
	"mixed.example.com":     {"93.184.216.35", "127.0.0.1"},
	"localhost":             {"127.0.0.1", "::1"},
	"db.internal":           {"10.0.0.5"},
	"mapped.example.com":    {"::ffff:127.0.0.1"},
	"nat64.example.com":     {"64:ff9b::7f00:1"},
	"127.0.0.1.nip.io":      {"127.0.0.1"},
	"xn--bcher-kva.example": {"93.184.216.36"},
}

func TestPolicyAllowlist(t *testing.T) {
	allow := mustRules(t,
		"api.anthropic.com", "*.github.com:443", "github.com:443,22",
		"registry.npmjs.org GET,HEAD", "rebind.example.com", "localhost:3000",
		"127.0.0.1.nip.io", "mixed.example.com", "bücher.example", "db.internal:5432",
		"10.0.0.5:5432", "[::1]:3001", "metadata.example",
	)
	p := NewPolicy(Allowlist, allow, nil)
	for _, tc := range []struct {
		d       Destination
		allowed bool
		rule    string
		addrs   []string
		fix     string
		says    string
	}{
		{d: Destination{Host: "api.anthropic.com", Port: 443}, allowed: true, rule: "api.anthropic.com", addrs: []string{"160.79.104.10"}},
		{d: Destination{Host: "API.Anthropic.com.", Port: 443}, allowed: true, rule: "api.anthropic.com"},
		{d: Destination{Host: "api.anthropic.com", Port: 22}, fix: "api.anthropic.com:22", says: "not in the sandbox's network allowlist"},
		{d: Destination{Host: "api.github.com", Port: 443}, allowed: true, rule: "*.github.com:443"},
		{d: Destination{Host: "github.com", Port: 22}, allowed: true, rule: "github.com:443,22"},
		{d: Destination{Host: "evil.example.com", Port: 443}, fix: "evil.example.com:443", says: "evil.example.com:443 is not in the sandbox's network allowlist"},
		// A name that resolves to loopback is refused unless a rule names the address.
		{d: Destination{Host: "rebind.example.com", Port: 443}, fix: "127.0.0.1:443", says: "rebind.example.com resolves to 127.0.0.1, a loopback address"},
		{d: Destination{Host: "localhost", Port: 3000}, fix: "127.0.0.1:3000", says: "loopback"},
		{d: Destination{Host: "127.0.0.1.nip.io", Port: 80}, fix: "127.0.0.1:80", says: "loopback"},
		{d: Destination{Host: "metadata.example", Port: 80}, fix: "169.254.169.254:80", says: "link-local"},
		// The loopback answer of a mixed one is dropped, the public one kept.
		{d: Destination{Host: "mixed.example.com", Port: 443}, allowed: true, addrs: []string{"93.184.216.35"}},
		// A private host by name: the name rule and the address rule.
		{d: Destination{Host: "db.internal", Port: 5432}, allowed: true, rule: "10.0.0.5:5432", addrs: []string{"10.0.0.5"}},
		{d: Destination{Host: "10.0.0.5", Port: 5432}, allowed: true, rule: "10.0.0.5:5432"},
		{d: Destination{Host: "[::1]", Port: 3001}, allowed: true, rule: "[::1]:3001"},
		{d: Destination{Host: "::1", Port: 3001}, allowed: true},
		{d: Destination{Host: "127.0.0.1", Port: 3000}, fix: "127.0.0.1:3000", says: "loopback"},
		{d: Destination{Host: "[::ffff:127.0.0.1]", Port: 3000}, fix: "127.0.0.1:3000", says: "loopback"},
		{d: Destination{Host: "10.0.0.5", Port: 5433}, fix: "10.0.0.5:5433", says: "private"},
		{d: Destination{Host: "xn--bcher-kva.example", Port: 443}, allowed: true, rule: "bücher.example"},
		{d: Destination{Host: "bücher.example", Port: 443}, allowed: true, rule: "bücher.example"},
		// Forms resolvers read as addresses are not names.
		{d: Destination{Host: "127.1", Port: 80}, says: "non-standard form"},
		{d: Destination{Host: "0x7f.1", Port: 80}, says: "non-standard form"},
		{d: Destination{Host: "2130706433", Port: 80}, says: "non-standard form"},
		{d: Destination{Host: "evil.example.com", Port: 0}, says: "port 0"},
		{d: Destination{Host: "fe80::1%eth0", Port: 22}, says: "scoped address"},
		{d: Destination{Host: "[::1%lo]", Port: 3001}, says: "scoped address"},
		{d: Destination{Host: "evil.example.com:443", Port: 443}, says: "not an address"},
		{d: Destination{Host: "", Port: 443}, says: "no host name"},
		// Methods: visible in plain HTTP, not in a tunnel.
		{d: Destination{Host: "registry.npmjs.org", Port: 80, Method: "GET"}, allowed: true, rule: "registry.npmjs.org GET,HEAD"},
		{d: Destination{Host: "registry.npmjs.org", Port: 80, Method: "PUT"}, fix: "registry.npmjs.org:80", says: "not in the sandbox's network allowlist"},
		{d: Destination{Host: "registry.npmjs.org", Port: 443}, fix: "registry.npmjs.org:443", says: "allowed only for GET, HEAD"},
	} {
		r := newResolver(testDNS)
		v := p.Check(context.Background(), tc.d, r)
		if v.Allowed != tc.allowed {
			t.Errorf("%v: allowed=%v (%s: %s), want %v", tc.d, v.Allowed, v.Rule, v.Reason, tc.allowed)
			continue
		}
		if tc.rule != "" && v.Rule != tc.rule {
			t.Errorf("%v: rule %q, want %q", tc.d, v.Rule, tc.rule)
		}
		if tc.addrs != nil {
			var got []string
			for _, a := range v.Addrs {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tc.addrs) {
				t.Errorf("%v: addrs %v, want %v", tc.d, got, tc.addrs)
			}
		}
		if !tc.allowed {
			if v.Fix != tc.fix {
				t.Errorf("%v: fix %q, want %q (%s)", tc.d, v.Fix, tc.fix, v.Reason)
			}
			if !strings.Contains(v.Reason, tc.says) {
				t.Errorf("%v: reason %q does not say %q", tc.d, v.Reason, tc.says)
			}
			if len(v.Addrs) > 0 && v.MethodsOnly == nil {
				t.Errorf("%v: refused with addresses to connect to: %v", tc.d, v.Addrs)
			}
		}
	}
}

func TestRefusedNameNeverReachesDNS(t *testing.T) {
	p := NewPolicy(Allowlist, mustRules(t, "api.anthropic.com"), mustRules(t, "*.evil.example.com"))
	r := newResolver(testDNS)
	for _, h := range []string{"secret-data.attacker.example", "x.evil.example.com", "api.anthropic.com.attacker.example"} {
		if v := p.Check(context.Background(), Destination{Host: h, Port: 443}, r); v.Allowed {
			t.Errorf("%s allowed", h)
		}
	}
	if got := r.lookups(); len(got) != 0 {
		t.Errorf("refused names were looked up (a DNS channel out): %v", got)
	}
	p.Check(context.Background(), Destination{Host: "api.anthropic.com", Port: 443}, r)
	if got := r.lookups(); !slices.Equal(got, []string{"api.anthropic.com"}) {
		t.Errorf("lookups %v, want one of api.anthropic.com", got)
	}
}

func TestDenyBeatsAllow(t *testing.T) {
	for _, tc := range []struct {
		mode        Mode
		allow, deny []string
		d           Destination
		rule        string
	}{
		{Allowlist, []string{"*.github.com"}, []string{"gist.github.com"}, Destination{Host: "gist.github.com", Port: 443}, "gist.github.com"},
		{Allowlist, []string{"gist.github.com"}, []string{"*.github.com"}, Destination{Host: "gist.github.com", Port: 443}, "*.github.com"},
		{Allowlist, []string{"evil.example.com"}, []string{"evil.example.com"}, Destination{Host: "EVIL.example.com.", Port: 443}, "evil.example.com"},
		{Allowlist, []string{"evil.example.com"}, []string{"93.184.216.0/24"}, Destination{Host: "evil.example.com", Port: 443}, "93.184.216.0/24"},
		{Allowlist, []string{"127.0.0.1:3000"}, []string{"127.0.0.0/8:*"}, Destination{Host: "127.0.0.1", Port: 3000}, "127.0.0.0/8:*"},
		{Open, nil, []string{"evil.example.com"}, Destination{Host: "evil.example.com", Port: 443}, "evil.example.com"},
		{Open, nil, []string{"evil.example.com:443"}, Destination{Host: "evil.example.com.", Port: 443}, "evil.example.com:443"},
		{Open, nil, []string{"api.example.com POST"}, Destination{Host: "api.example.com", Port: 80, Method: "POST"}, "api.example.com POST"},
		// A deny rule limited to methods refuses a tunnel whole.
		{Open, nil, []string{"api.example.com POST"}, Destination{Host: "api.example.com", Port: 443}, "api.example.com POST"},
	} {
		p := NewPolicy(tc.mode, mustRules(t, tc.allow...), mustRules(t, tc.deny...))
		r := newResolver(map[string][]string{"gist.github.com": {"140.82.121.3"}, "evil.example.com": {"93.184.216.34"}, "api.example.com": {"93.184.216.40"}})
		v := p.Check(context.Background(), tc.d, r)
		if v.Allowed || v.Rule != tc.rule || v.Fix != "" || !strings.Contains(v.Reason, "deny rule") {
			t.Errorf("%v %v allow=%v deny=%v: allowed=%v rule=%q fix=%q reason=%q, want refused by %q", tc.mode, tc.d, tc.allow, tc.deny, v.Allowed, v.Rule, v.Fix, v.Reason, tc.rule)
		}
	}
	// Deny POST leaves GET alone in plain HTTP.
	p := NewPolicy(Open, nil, mustRules(t, "api.example.com POST"))
	v := p.Check(context.Background(), Destination{Host: "api.example.com", Port: 80, Method: "GET"}, newResolver(map[string][]string{"api.example.com": {"93.184.216.40"}}))
	if !v.Allowed {
		t.Errorf("GET refused by a POST deny rule: %s", v.Reason)
	}
}

func TestPolicyOpen(t *testing.T) {
	p := NewPolicy(Open, mustRules(t, "10.0.0.5:5432"), nil)
	r := newResolver(testDNS)
	for _, tc := range []struct {
		host    string
		port    uint16
		allowed bool
	}{
		{"evil.example.com", 443, true},
		{"evil.example.com", 2222, true},
		{"93.184.216.34", 80, true},
		{"rebind.example.com", 80, false},
		{"localhost", 8080, false},
		{"metadata.example", 80, false},
		{"169.254.169.254", 80, false},
		{"[::ffff:127.0.0.1]", 80, false},
		{"mapped.example.com", 80, false},
		{"nat64.example.com", 80, false},
		{"0.0.0.0", 80, false},
		{"[::]", 80, false},
		{"10.0.0.5", 5432, true},
		{"db.internal", 5432, true},
		{"db.internal", 22, false},
		{"nowhere.example", 80, false},
	} {
		v := p.Check(context.Background(), Destination{Host: tc.host, Port: tc.port}, r)
		if v.Allowed != tc.allowed {
			t.Errorf("open: %s:%d allowed=%v (%s), want %v", tc.host, tc.port, v.Allowed, v.Reason, tc.allowed)
		}
		if tc.host == "nowhere.example" && (!v.Failed || v.Rule != RuleUnresolved) {
			t.Errorf("an unknown name is a failure, not a refusal: %+v", v)
		}
	}
}

func TestCheckURL(t *testing.T) {
	p := NewPolicy(Allowlist, mustRules(t, "github.com", "*.githubusercontent.com:443", "cache.example.org GET", "10.0.0.7:8080"), mustRules(t, "gist.githubusercontent.com"))
	for _, tc := range []struct {
		url     string
		allowed bool
		rule    string
	}{
		{"https://github.com/NixOS/nixpkgs/archive/abc.tar.gz", true, "github.com"},
		{"https://objects.githubusercontent.com/x", true, "*.githubusercontent.com:443"},
		{"http://objects.githubusercontent.com/x", false, RuleNotListed},
		{"https://gist.githubusercontent.com/x", false, "gist.githubusercontent.com"},
		{"https://cache.example.org/nar/x", true, "cache.example.org GET"},
		{"http://10.0.0.7:8080/src.tar", true, "10.0.0.7:8080"},
		{"http://10.0.0.8:8080/src.tar", false, RuleNonPublic},
		{"http://127.0.0.1/x", false, RuleNonPublic},
		{"http://[::1]/x", false, RuleNonPublic},
		{"http://localhost:8080/x", false, RuleNonPublic},
		{"http://foo.localhost/x", false, RuleNonPublic},
		{"https://evil.example.com/x", false, RuleNotListed},
		{"mirror://gnu/hello.tar.gz", false, RuleScheme},
		{"git+ssh://github.com/x", false, RuleScheme},
		{"https://github.com:99999/x", false, RuleInvalid},
		{"not a url", false, RuleInvalid},
	} {
		ok, rule := p.AllowURL(tc.url)
		if ok != tc.allowed || rule != tc.rule {
			t.Errorf("AllowURL(%q) = %v, %q; want %v, %q (%s)", tc.url, ok, rule, tc.allowed, tc.rule, p.CheckURL(tc.url).Reason)
		}
	}
	open := NewPolicy(Open, nil, mustRules(t, "evil.example.com"))
	if ok, _ := open.AllowURL("https://any.example.net/x.tar.gz"); !ok {
		t.Error("open mode refuses a public name")
	}
	if ok, rule := open.AllowURL("https://evil.example.com/x"); ok || rule != "evil.example.com" {
		t.Errorf("open mode: a denied host: %v %q", ok, rule)
	}
	if ok, _ := open.AllowURL("http://169.254.169.254/latest/meta-data"); ok {
		t.Error("open mode allows the metadata address")
	}
}

func TestLearn(t *testing.T) {
	p := NewPolicy(Learn, mustRules(t, "api.anthropic.com:443"), mustRules(t, "evil.example.com"))
	r := newResolver(testDNS)
	ctx := context.Background()
	for _, d := range []Destination{
		{Host: "api.anthropic.com", Port: 443},
		{Host: "api.anthropic.com", Port: 443},
		{Host: "github.com", Port: 22},
		{Host: "GitHub.com.", Port: 22},
		{Host: "registry.npmjs.org", Port: 80, Method: "GET"},
		{Host: "registry.npmjs.org", Port: 80, Method: "HEAD"},
		{Host: "api.github.com", Port: 80, Method: "GET"},
		{Host: "api.github.com", Port: 80}, // a tunnel on the same port: every method
		{Host: "localhost", Port: 3000},    // refused: loopback
		{Host: "evil.example.com", Port: 443},
		{Host: "nowhere.example", Port: 443}, // failed: not learned
		{Host: "93.184.216.34", Port: 8443},
	} {
		p.Check(ctx, d, r)
	}
	p.AllowURL("https://cache.example.org/nar/abc")
	got := p.Learned()
	var allow []string
	for _, lr := range got.Allow {
		s := lr.Rule
		if lr.Covered {
			s += " (covered)"
		}
		allow = append(allow, s)
	}
	want := []string{
		"93.184.216.34:8443",
		"api.anthropic.com:443 (covered)",
		"api.github.com:80",
		"cache.example.org:443 GET",
		"github.com:22",
		"registry.npmjs.org:80 GET,HEAD",
	}
	if !slices.Equal(allow, want) {
		t.Errorf("learned\n%s\nwant\n%s", strings.Join(allow, "\n"), strings.Join(want, "\n"))
	}
	if p := got.Proposed(); len(p) != len(want)-1 || slices.Contains(p, "api.anthropic.com:443") {
		t.Errorf("proposed %v: every learned rule but the covered one", p)
	}
	if len(got.Refused) != 1 || got.Refused[0].Rule != "127.0.0.1:3000" || !strings.Contains(got.Refused[0].Reason, "loopback") {
		t.Errorf("refused: %+v", got.Refused)
	}
	// The learned rules, as an allowlist, allow the same session.
	var texts []string
	for _, lr := range got.Allow {
		texts = append(texts, lr.Rule)
	}
	strict := NewPolicy(Allowlist, mustRules(t, texts...), nil)
	for _, d := range []Destination{
		{Host: "api.anthropic.com", Port: 443},
		{Host: "github.com", Port: 22},
		{Host: "registry.npmjs.org", Port: 80, Method: "HEAD"},
		{Host: "api.github.com", Port: 80, Method: "POST"},
		{Host: "93.184.216.34", Port: 8443},
	} {
		if v := strict.Check(ctx, d, r); !v.Allowed {
			t.Errorf("learned allowlist refuses %v: %s", d, v.Reason)
		}
	}
	if ok, _ := strict.AllowURL("https://cache.example.org/nar/abc"); !ok {
		t.Error("learned allowlist refuses the fetched URL")
	}
	if v := strict.Check(ctx, Destination{Host: "registry.npmjs.org", Port: 80, Method: "POST"}, r); v.Allowed {
		t.Error("learned allowlist is wider than what was seen (POST to the registry)")
	}
	if NewPolicy(Open, nil, nil).Learned() != nil {
		t.Error("Learned outside learn mode")
	}
}

func TestParseMode(t *testing.T) {
	for _, s := range []string{"allowlist", "open", "learn"} {
		m, err := ParseMode(s)
		if err != nil || m.String() != s {
			t.Errorf("ParseMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseMode("none"); err == nil || !strings.Contains(err.Error(), "no proxy") {
		t.Errorf("ParseMode(none) = %v", err)
	}
	if _, err := ParseMode("closed"); err == nil {
		t.Error("ParseMode(closed) accepted")
	}
	if Mode(0) != Allowlist {
		t.Error("the zero Mode must be the strict one")
	}
}
