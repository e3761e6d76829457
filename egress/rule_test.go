package egress

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseRuleNormalForms(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"api.anthropic.com", "api.anthropic.com"},
		{"  API.Anthropic.COM  ", "api.anthropic.com"},
		{"evil.com.", "evil.com"}, // the FQDN form is the same host
		{"*.github.com:443", "*.github.com:443"},
		{"github.com:22", "github.com:22"},
		{"example.com:*", "example.com:*"},
		{"example.com:8000-8999", "example.com:8000-8999"},
		{"example.com:80,8080", "example.com:80,8080"},
		{"registry.npmjs.org GET,HEAD", "registry.npmjs.org GET,HEAD"},
		{"registry.npmjs.org head, get", "registry.npmjs.org GET,HEAD"},
		{"registry.npmjs.org\tGET GET", "registry.npmjs.org GET"},
		{"10.0.0.5:5432", "10.0.0.5:5432"},
		{"10.0.0.5", "10.0.0.5"},
		{"192.168.1.0/24:8080", "192.168.1.0/24:8080"},
		{"[::1]:3000", "[::1]:3000"},
		{"::1", "::1"},
		{"[fd00::/8]:443", "[fd00::/8]:443"},
		{"fd00::/8", "fd00::/8"},
		{"[::ffff:127.0.0.1]:80", "127.0.0.1:80"}, // IPv4-mapped is the IPv4 address
		{"[::ffff:10.0.0.0/104]", "10.0.0.0/8"},
		{"bücher.example", "xn--bcher-kva.example"}, // IDN in punycode, as clients send it
		{"BÜCHER.example:443", "xn--bcher-kva.example:443"},
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"1.2.3.4.nip.io", "1.2.3.4.nip.io"}, // a name (it resolves to 1.2.3.4; checked after lookup)
		{"127.0.0.1.nip.io:80", "127.0.0.1.nip.io:80"},
		{"_acme.example.com", "_acme.example.com"},
		{"localhost:3000", "localhost:3000"},
		{"*.github.io", "*.github.io"}, // a private suffix: someone owns github.io
	} {
		r, err := ParseRule(tc.in)
		if err != nil {
			t.Errorf("ParseRule(%q): %v", tc.in, err)
			continue
		}
		if got := r.String(); got != tc.want {
			t.Errorf("ParseRule(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseRuleRefusesHostileForms(t *testing.T) {
	for _, tc := range []struct{ in, says string }{
		{"", "empty"},
		{"   ", "empty"},
		{"*", "lone *"},
		{"*.", "no host name"},
		{"*.com", "public suffix"},
		{"*.co.uk", "public suffix"},
		{"*.localhost", "public suffix"},
		{"*example.com", "leading labels"},
		{"api.*.example.com", "leading labels"},
		{"*.*.example.com", "leading labels"},
		{"evil.com..", "empty label"},
		{".evil.com", "empty label"},
		{"evil..com", "empty label"},
		{"127.1", "non-standard form"},
		{"0x7f.1", "non-standard form"},
		{"0x7f000001", "non-standard form"},
		{"2130706433", "non-standard form"},
		{"0177.0.0.1", "not an address"},
		{"127.0.0.01", "not an address"},
		{"256.1.1.1", "not an address"},
		{"10.0.0.5/8", "did you mean 10.0.0.0/8"},
		{"0.0.0.0/0", "every address"},
		{"::/0", "every address"},
		{"[fe80::1%eth0]:22", "scoped"},
		{"[::1]", ""}, // fine: brackets without a port
		{"[example.com]:443", "IPv6"},
		{"[::1]3000", "only :port"},
		{"[::1:3000", "without ]"},
		{"example.com:0", "out of range"},
		{"example.com:65536", "out of range"},
		{"example.com:+80", "not a port"},
		{"example.com:0x50", "not a port"},
		{"example.com:", "no port after the colon"},
		{"example.com:90-80", "backwards"},
		{"example.com:80,", "not a port"},
		{"https://example.com/", "not a URL"},
		{"example.com/path", "not an address"},
		{"exa mple.com", "HTTP method"},
		{"example.com CONNECT", "tunnel"},
		{"example.com G3T", "HTTP method"},
		{"example.com ,", "no method"},
		{"ex@mple.com", "not a host name"},
		{"-example.com", "starts or ends with -"},
		{strings.Repeat("a", 64) + ".com", "longer than 63"},
		{strings.Repeat("a.", 127) + "com", "longer than 253"},
		{"xn--.example", "ends with -"},
	} {
		_, err := ParseRule(tc.in)
		if tc.says == "" {
			if err != nil {
				t.Errorf("ParseRule(%q): %v", tc.in, err)
			}
			continue
		}
		var re *RuleError
		if !errors.As(err, &re) {
			t.Errorf("ParseRule(%q) = %v, want a *RuleError saying %q", tc.in, err, tc.says)
			continue
		}
		if !strings.Contains(err.Error(), tc.says) {
			t.Errorf("ParseRule(%q): %q does not say %q", tc.in, err, tc.says)
		}
		// The message names the rule as written, for the config file's line.
		if !strings.Contains(err.Error(), `"`+tc.in+`"`) && !strings.Contains(err.Error(), tc.in) {
			t.Errorf("ParseRule(%q): %q does not name the rule", tc.in, err)
		}
	}
}

func TestRuleMatching(t *testing.T) {
	mustRule := func(s string) Rule {
		t.Helper()
		r, err := ParseRule(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	wild := mustRule("*.github.com")
	for name, want := range map[string]bool{
		"api.github.com":     true,
		"a.b.github.com":     true,
		"github.com":         false, // the apex needs its own rule
		"evilgithub.com":     false,
		"github.com.evil.io": false,
	} {
		if got := wild.matchName(name); got != want {
			t.Errorf("*.github.com matches %q: %v, want %v", name, got, want)
		}
	}
	web := mustRule("example.com")
	for port, want := range map[uint16]bool{80: true, 443: true, 22: false, 8080: false} {
		if got := web.matchPort(port); got != want {
			t.Errorf("example.com (no port) matches port %d: %v, want %v", port, got, want)
		}
	}
	if !mustRule("example.com:*").matchPort(22) {
		t.Error(":* does not match port 22")
	}
	r := mustRule("example.com:8000-8999,22")
	if !r.matchPort(8500) || !r.matchPort(22) || r.matchPort(9000) {
		t.Error("port list and range")
	}
	cidr := mustRule("192.168.1.0/24:8080")
	if !cidr.matchAddr(netip.MustParseAddr("192.168.1.77")) || cidr.matchAddr(netip.MustParseAddr("192.168.2.1")) {
		t.Error("CIDR rule")
	}
	if !cidr.matchAddr(netip.MustParseAddr("::ffff:192.168.1.77")) {
		t.Error("an IPv4-mapped address must match its IPv4 rule")
	}
	m := mustRule("registry.npmjs.org GET,HEAD")
	if !m.matchMethod("GET") || m.matchMethod("POST") || m.matchMethod("") {
		t.Error("method rule: GET yes, POST no, a tunnel (unseen methods) no")
	}
}

func TestNonPublic(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		public bool
	}{
		{"93.184.216.34", true},
		{"1.1.1.1", true},
		{"2606:4700:4700::1111", true},
		{"64:ff9b::5db8:d822", true}, // NAT64 of 93.184.216.34 (DNS64 on IPv6-only hosts)
		{"0.0.0.0", false},
		{"0.1.2.3", false},
		{"10.1.2.3", false},
		{"100.64.0.1", false},
		{"100.127.255.255", false},
		{"100.128.0.1", true},
		{"127.0.0.1", false},
		{"127.255.255.254", false},
		{"169.254.169.254", false},
		{"172.16.0.1", false},
		{"172.31.255.255", false},
		{"172.32.0.1", true},
		{"192.0.0.8", false},
		{"192.0.2.1", false},
		{"192.88.99.1", false},
		{"192.168.0.1", false},
		{"198.18.0.1", false},
		{"198.19.255.255", false},
		{"198.20.0.1", true},
		{"198.51.100.1", false},
		{"203.0.113.1", false},
		{"224.0.0.251", false},
		{"239.255.255.250", false},
		{"240.0.0.1", false},
		{"255.255.255.255", false},
		{"::", false},
		{"::1", false},
		{"::ffff:127.0.0.1", false},
		{"::ffff:10.0.0.1", false},
		{"::ffff:93.184.216.34", true},
		{"::127.0.0.1", false}, // IPv4-compatible
		{"64:ff9b::7f00:1", false},
		{"64:ff9b::a00:1", false},
		{"64:ff9b:1::1", false},
		{"100::1", false},
		{"2001::1", false}, // Teredo
		{"2001:db8::1", false},
		{"2002:7f00:1::1", false}, // 6to4
		{"3fff::1", false},
		{"fc00::1", false},
		{"fd12:3456::1", false},
		{"fe80::1", false},
		{"fec0::1", false},
		{"ff02::1", false},
		{"4000::1", false},
	} {
		a := netip.MustParseAddr(tc.addr)
		why := nonPublic(a)
		if (why == "") != tc.public {
			t.Errorf("nonPublic(%s) = %q, want public=%v", tc.addr, why, tc.public)
		}
	}
}
