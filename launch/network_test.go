package launch

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

func noEnv(string) (string, bool) { return "", false }

// The default allowlist holds what Claude Code needs (Anthropic's network
// requirements for it), marked as built in; open and learn add nothing of
// their own; none is no proxy at all.
func TestEgressModes(t *testing.T) {
	e, err := NewEgress(NetAllowlist, []control.Rule{{Text: "pypi.org", Source: "claude-sandbox.toml:3"}}, nil, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, r := range e.Allow {
		texts = append(texts, r.Text)
		if r.Text == "api.anthropic.com" && !strings.HasPrefix(r.Source, "built in") {
			t.Errorf("the default rule's source: %q", r.Source)
		}
	}
	for _, want := range []string{"api.anthropic.com", "claude.ai", "console.anthropic.com", "platform.claude.com", "statsig.anthropic.com", "sentry.io", "*.sentry.io", "pypi.org"} {
		if !slices.Contains(texts, want) {
			t.Errorf("allowlist lacks %s: %v", want, texts)
		}
	}
	if open, _ := NewEgress(NetOpen, nil, nil, noEnv); len(open.Allow) != 0 {
		t.Errorf("open mode has rules of its own: %v", open.Allow)
	}
	if none, err := NewEgress(NetNone, nil, nil, noEnv); none != nil || err != nil {
		t.Errorf("none: %v %v", none, err)
	}
	var me *NetworkModeError
	if _, err := NewEgress("everything", nil, nil, noEnv); !errors.As(err, &me) {
		t.Errorf("an unknown mode: %v", err)
	}
	host := map[string]string{"https_proxy": "http://user:pw@proxy.corp:3128", "NO_PROXY": ".corp"}
	e, _ = NewEgress(NetOpen, nil, nil, func(k string) (string, bool) { v, ok := host[k]; return v, ok })
	if e.Upstream != "http://user:pw@proxy.corp:3128" || e.NoProxy != ".corp" {
		t.Errorf("the host's proxy: %q %q", e.Upstream, e.NoProxy)
	}
}

func TestProxyEnvAndSuggestions(t *testing.T) {
	if ProxyEnv(nil) != nil {
		t.Error("no network, yet proxy variables")
	}
	env := ProxyEnv(&Egress{Mode: NetOpen})
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"} {
		if env[k] != "http://127.0.0.1:3128" {
			t.Errorf("%s = %q", k, env[k])
		}
	}
	if env["ALL_PROXY"] != "socks5h://127.0.0.1:3128" || env["NO_PROXY"] != "localhost,::1" {
		t.Errorf("ALL_PROXY %q NO_PROXY %q", env["ALL_PROXY"], env["NO_PROXY"])
	}
	e, _ := NewEgress(NetAllowlist, []control.Rule{{Text: "pypi.org"}}, nil, noEnv)
	got := SuggestedRules([]string{"python3Packages.numpy", "nodejs", "jq"}, e)
	if !slices.Equal(got, []string{"files.pythonhosted.org", "registry.npmjs.org"}) {
		t.Errorf("suggested %v", got)
	}
	if open, _ := NewEgress(NetOpen, nil, nil, noEnv); SuggestedRules([]string{"python3"}, open) != nil {
		t.Error("open mode needs no suggestions")
	}
}
