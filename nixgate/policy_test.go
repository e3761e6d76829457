package nixgate

import (
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
	"github.com/nix-community/go-nix/pkg/derivation"
)

func TestEveryKnownOpHasARule(t *testing.T) {
	for n := range 2000 {
		op := nixdaemon.Op(n)
		_, ruled := opPolicy[op]
		if op.Known() != ruled {
			t.Errorf("%s: known %v, has a rule %v", op, op.Known(), ruled)
		}
	}
}

func req(op nixdaemon.Op) *nixdaemon.Request {
	return &nixdaemon.Request{Op: op, Version: nixdaemon.ClientVersion, Path: "/nix/store/00000000000000000000000000000000-x"}
}

func TestStaticDecisions(t *testing.T) {
	g := New(Config{})
	with := func(op nixdaemon.Op, f func(*nixdaemon.Request)) *nixdaemon.Request {
		q := req(op)
		f(q)
		return q
	}
	cases := []struct {
		name   string
		q      *nixdaemon.Request
		refuse bool
		rule   string
	}{
		{"query", req(nixdaemon.OpQueryPathInfo), false, RuleQuery},
		{"valid paths without substitution", req(nixdaemon.OpQueryValidPaths), false, RuleQuery},
		{"valid paths with substitution", with(nixdaemon.OpQueryValidPaths, func(q *nixdaemon.Request) { q.Substitute = true }), false, RuleSubstitute},
		{"ensure path", req(nixdaemon.OpEnsurePath), false, RuleSubstitute},
		{"add", req(nixdaemon.OpAddToStore), false, RuleAdd},
		{"add with repair", with(nixdaemon.OpAddToStore, func(q *nixdaemon.Request) { q.Repair = true }), true, RuleRepair},
		{"add multiple unsigned", with(nixdaemon.OpAddMultipleToStore, func(q *nixdaemon.Request) { q.DontCheckSigs = true }), true, RuleSignatureBypass},
		{"indirect root", req(nixdaemon.OpAddIndirectRoot), false, RuleTempRoot},
		{"perm root", req(nixdaemon.OpAddPermRoot), true, RuleTrust},
		{"signatures", req(nixdaemon.OpAddSignatures), true, RuleTrust},
		{"import", req(nixdaemon.OpImportPaths), true, RuleTrust},
		{"inline derivation", with(nixdaemon.OpBuildDerivation, func(q *nixdaemon.Request) { q.Derivation = &nixdaemon.InlineDerivation{Builder: "/bin/sh"} }), true, RuleTrust},
		{"build log", req(nixdaemon.OpAddBuildLog), true, RuleTrust},
		{"realisation", req(nixdaemon.OpRegisterDrvOutput), true, RuleTrust},
		{"optimise", req(nixdaemon.OpOptimiseStore), true, RuleHostMaintenance},
		{"verify", req(nixdaemon.OpVerifyStore), true, RuleHostMaintenance},
		{"find roots", req(nixdaemon.OpFindRoots), true, RuleHostMaintenance},
		{"gc listing", with(nixdaemon.OpCollectGarbage, func(q *nixdaemon.Request) { q.GC = &nixdaemon.GCRequest{Action: nixdaemon.GCReturnDead} }), true, RuleGC},
		{"gc delete", with(nixdaemon.OpCollectGarbage, func(q *nixdaemon.Request) { q.GC = &nixdaemon.GCRequest{Action: nixdaemon.GCDeleteSpecific} }), true, RuleGC},
		{"removed", req(nixdaemon.OpQueryFailedPaths), true, RuleRemovedOp},
		{"unknown", req(48), true, RuleUnknownOp},
		{"feature op", req(1000), true, RuleUnknownOp},
	}
	for _, c := range cases {
		d := g.decideStatic(c.q)
		if d.refuse != c.refuse || d.rule != c.rule {
			t.Errorf("%s: refuse=%v rule=%s, want refuse=%v rule=%s", c.name, d.refuse, d.rule, c.refuse, c.rule)
		}
		if d.refuse {
			msg := d.message()
			if !strings.HasPrefix(msg, "claude-sandbox refused ") || !strings.Contains(msg, "(rule "+c.rule+")") || d.fix == "" {
				t.Errorf("%s: message %q lacks what, rule or fix", c.name, msg)
			}
			if e := d.entry(c.q); e.Decision != sessionlog.Refuse || e.Service != "nix" || e.Fix == "" || e.Op != c.q.Op.String() {
				t.Errorf("%s: log entry %+v", c.name, e)
			}
		}
	}
	// An untrusted add is forwarded as the daemon treats it: not ultimate.
	q := req(nixdaemon.OpAddToStoreNar)
	q.Info = &nixdaemon.PathInfo{Ultimate: true}
	if d := g.decideStatic(q); d.refuse || q.Info.Ultimate {
		t.Errorf("AddToStoreNar: refuse=%v, ultimate left %v", d.refuse, q.Info.Ultimate)
	}
}

func TestSettingsDecisions(t *testing.T) {
	for overrides, refuse := range map[[2]string]bool{
		{"connect-timeout", "5"}:        false,
		{"timeout", "60"}:               false,
		{"builders", ""}:                false,
		{"experimental-features", "x"}:  false,
		{"builders", "ssh://host"}:      true,
		{"substituters", "http://x"}:    true,
		{"trusted-public-keys", "k:x"}:  true,
		{"sandbox", "false"}:            true,
		{"sandbox-paths", "/etc"}:       true,
		{"post-build-hook", "/x"}:       true,
		{"allowed-uris", "https://"}:    true,
		{"require-sigs", "false"}:       true,
		{"build-timeout", "5"}:          true, // an alias the daemon itself does not take from the untrusted
		{"extra-substituters", "http:"}: true,
	} {
		d := decideSettings(&nixdaemon.Settings{Overrides: map[string]string{overrides[0]: overrides[1]}})
		if d.refuse != refuse {
			t.Errorf("%s = %q: refuse %v, want %v", overrides[0], overrides[1], d.refuse, refuse)
		}
		if refuse && !strings.Contains(d.message(), "'"+overrides[0]+"'") {
			t.Errorf("%s: message does not name the setting: %s", overrides[0], d.message())
		}
	}
}

func TestClassifyDerivations(t *testing.T) {
	out := func(algo, hash string) map[string]*derivation.Output {
		return map[string]*derivation.Output{"out": {Path: "/nix/store/x", HashAlgorithm: algo, Hash: hash}}
	}
	for name, c := range map[string]struct {
		drv  derivation.Derivation
		kind drvKind
		urls string
	}{
		"input-addressed": {derivation.Derivation{Outputs: out("", ""), Env: map[string]string{}}, drvInputAddressed, ""},
		"floating CA":     {derivation.Derivation{Outputs: out("r:sha256", ""), Env: map[string]string{}}, drvInputAddressed, ""},
		"fetchurl": {derivation.Derivation{Outputs: out("sha256", "abcd"),
			Env: map[string]string{"urls": "https://a.example/x https://b.example/x"}}, drvFixedOutput, "https://a.example/x https://b.example/x"},
		"builtin fetchurl": {derivation.Derivation{Outputs: out("r:sha256", "abcd"), Env: map[string]string{"url": "https://c.example/y"}}, drvFixedOutput, "https://c.example/y"},
		"impure":           {derivation.Derivation{Outputs: out("r:sha256", "impure"), Env: map[string]string{"__impure": "1"}}, drvImpure, ""},
		"structured attrs": {derivation.Derivation{Outputs: out("sha256", "abcd"),
			Env: map[string]string{"__json": `{"urls":["https://d.example/z"],"outputHash":"abcd"}`}}, drvFixedOutput, "https://d.example/z"},
	} {
		kind, urls := classify(&c.drv)
		if kind != c.kind || strings.Join(urls, " ") != c.urls {
			t.Errorf("%s: kind %d urls %q, want %d %q", name, kind, urls, c.kind, c.urls)
		}
	}
}

func TestParseConfigJSON(t *testing.T) {
	for in, want := range map[string]SandboxMode{
		`{"sandbox":{"value":true},"trusted-users":{"value":["root","@wheel"]}}`: SandboxOn,
		`{"sandbox":{"value":false}}`:                                            SandboxOff,
		`{"sandbox":{"value":"relaxed"}}`:                                        SandboxRelaxed,
	} {
		cfg, err := parseConfigJSON([]byte(in))
		if err != nil || cfg.sandbox != want {
			t.Errorf("%s: %v, %v; want %v", in, cfg.sandbox, err, want)
		}
	}
	for _, bad := range []string{`{}`, `{"sandbox":{"value":"maybe"}}`, `not json`} {
		if _, err := parseConfigJSON([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

func TestExplain(t *testing.T) {
	h := HostFacts{Socket: "/s", DaemonNixVersion: "2.8.0", DaemonProtocol: 0x122, Sandbox: SandboxOff,
		Trust: nixdaemon.TrustTrusted, TrustSource: "trusted-users in the daemon's nix.conf"}
	text := strings.Join(Explain(h, Config{}), "\n")
	for _, want := range []string{
		"host builds: not sandboxed (sandbox = false)",
		"builds inside: refused (host daemon has sandbox = false); opt in with --nix-unsandboxed-builds or nix-unsandboxed-builds = true",
		"fixed-output builds inside: refused",
		"you are a trusted user of the host daemon",
		"refused, whatever the host's trust in you",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("Explain lacks %q:\n%s", want, text)
		}
	}
	text = strings.Join(Explain(h, Config{AllowUnsandboxedBuilds: true, Network: true}), "\n")
	if !strings.Contains(text, "run on the host WITHOUT a sandbox") || !strings.Contains(text, "fixed-output builds inside: allowed") {
		t.Errorf("Explain with the opt-in and network:\n%s", text)
	}
	h.Sandbox = SandboxOn
	if text := strings.Join(Explain(h, Config{}), "\n"); !strings.Contains(text, "builds inside: allowed (the host daemon sandboxes them)") {
		t.Errorf("Explain on a sandboxing host:\n%s", text)
	}
}
