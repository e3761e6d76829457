package secrets

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
)

// Values shaped like real tokens (random here; no real token).
var samples = []struct {
	name, value, prefix string
	keepsLength         bool
}{
	{"Anthropic API key", anthropicKey, "sk-ant-api03-", true},
	{"GitHub classic token", "ghp_R7tQ2mX9vK4nB8cL1zW5yH3jF6dS0aP2eU7i", "ghp_", true},
	{"GitHub fine-grained token", "github_pat_11ABCDEFG0aBcDeFgHiJkL_mNoPqRsTuVwXyZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFG", "github_pat_", true},
	{"OpenAI project key", "sk-proj-" + strings.Repeat("Ab3_-x", 20), "sk-proj-", true},
	{"hex", "3f9a2c71be04d8e65a1f09c3b7d24e8a6c5f1b03", "", true},
	{"base64 with padding", base64.StdEncoding.EncodeToString([]byte("0123456789abcdefghijklmnopqrstu")), "", true},
	{"a short password", "hunter2", "", false},
	{"punctuation", "p@ss.w0rd!with#symbols$and%more^chars&here", "", true},
}

func TestPlaceholderFormat(t *testing.T) {
	for _, tc := range samples {
		t.Run(tc.name, func(t *testing.T) {
			p, err := newPlaceholder(tc.value, "")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(p, tc.prefix) || (tc.prefix == "" && publicPrefix(tc.value, "") != "") {
				t.Errorf("placeholder %q does not keep the prefix %q", p, tc.prefix)
			}
			if tc.keepsLength && len(p) != len(tc.value) {
				t.Errorf("placeholder %q has length %d, value %d", p, len(p), len(tc.value))
			}
			if !tc.keepsLength && len(p) <= len(tc.value) {
				t.Errorf("a short value's placeholder %q is not made longer", p)
			}
			// Same alphabet: every character of the placeholder's body is one
			// the value's alphabet has.
			body := strings.TrimRight(tc.value[len(tc.prefix):], "=")
			alphabet := alphabetOf(body)
			pbody := p[len(tc.prefix):]
			pbody, pad := strings.TrimRight(pbody, "="), len(pbody)-len(strings.TrimRight(pbody, "="))
			if !onlyFrom(pbody, alphabet) {
				t.Errorf("placeholder body %q leaves the alphabet %q", pbody, alphabet)
			}
			if pad != len(tc.value)-len(strings.TrimRight(tc.value, "=")) {
				t.Errorf("padding not kept: %q for %q", p, tc.value)
			}
			if tc.name == "base64 with padding" {
				if _, err := base64.StdEncoding.DecodeString(p); err != nil {
					t.Errorf("a base64 value's placeholder %q is not base64: %v", p, err)
				}
			}
		})
	}
	// A hex token stays hex; digits stay digits (a client checking the
	// format accepts the placeholder).
	if p, _ := newPlaceholder("ghp_0123456789", ""); !onlyFrom(p[4:], digits) {
		t.Errorf("digits: %q", p)
	}
	if p, _ := newPlaceholder("dp_live_"+strings.Repeat("a1", 20), "dp_live_"); !strings.HasPrefix(p, "dp_live_") {
		t.Errorf("configured prefix not kept: %q", p)
	}
	if p, _ := newPlaceholder("other_"+strings.Repeat("a1", 20), "dp_"); strings.HasPrefix(p, "other_") {
		t.Errorf("a prefix the value does not have kept something of it: %q", p)
	}
}

// TestPlaceholderReveal: beyond the prefix, a placeholder has nothing of
// the value; placeholders are unique across runs and unguessable.
func TestPlaceholderRevealsOnlyThePrefix(t *testing.T) {
	for _, tc := range samples {
		seen := map[string]bool{}
		for i := 0; i < 500; i++ {
			p, err := newPlaceholder(tc.value, "")
			if err != nil {
				t.Fatal(err)
			}
			if seen[p] {
				t.Fatalf("%s: placeholder %q made twice", tc.name, p)
			}
			seen[p] = true
			if l := longestCommon(p[len(tc.prefix):], tc.value[len(tc.prefix):]); l >= 8 {
				t.Fatalf("%s: placeholder %q shares %d characters in a row with the value", tc.name, p, l)
			}
		}
	}
	// Positions are independent of the value: over many placeholders of
	// one value, each position takes many characters.
	distinct := make([]map[byte]bool, len(anthropicKey))
	for i := range distinct {
		distinct[i] = map[byte]bool{}
	}
	for i := 0; i < 300; i++ {
		p, _ := newPlaceholder(anthropicKey, "")
		for j := len("sk-ant-api03-"); j < len(p); j++ {
			distinct[j][p[j]] = true
		}
	}
	for j := len("sk-ant-api03-"); j < len(anthropicKey); j++ {
		if len(distinct[j]) < 20 {
			t.Errorf("position %d of the placeholder takes only %d characters", j, len(distinct[j]))
		}
	}
}

func longestCommon(a, b string) int {
	best := 0
	for i := range a {
		for j := range b {
			k := 0
			for i+k < len(a) && j+k < len(b) && a[i+k] == b[j+k] {
				k++
			}
			best = max(best, k)
		}
	}
	return best
}

func resolvedSet(t *testing.T, values map[string]string, tomls ...string) *Set {
	t.Helper()
	var bs []Binding
	for _, tm := range tomls {
		bs = append(bs, binding(t, tm))
	}
	set := Resolve(context.Background(), bs, Options{LookupEnv: env(values)})
	for _, s := range set.Secrets() {
		if s.Status != Resolved {
			t.Fatalf("%v: %v", s, s.Err)
		}
	}
	return set
}

func TestPlaceholdersPerRun(t *testing.T) {
	b := BuiltIns(false)[0]
	o := Options{LookupEnv: env(map[string]string{"ANTHROPIC_API_KEY": anthropicKey})}
	a1 := Resolve(context.Background(), []Binding{b}, o).Env()["ANTHROPIC_API_KEY"]
	a2 := Resolve(context.Background(), []Binding{b}, o).Env()["ANTHROPIC_API_KEY"]
	if a1 == a2 || a1 == "" {
		t.Errorf("two runs share a placeholder: %q", a1)
	}
}

const (
	ghToml     = "[secrets.GH]\nvariable = \"GH_TOKEN\"\nhosts = [\"github.com\", \"*.github.com\"]\nenv = \"GH\"\n"
	deployToml = "[secrets.DEPLOY]\nhosts = [\"127.0.0.1:8443\"]\nenv = \"DEPLOY\"\nbodies = true\n"
	ghValue    = "ghp_R7tQ2mX9vK4nB8cL1zW5yH3jF6dS0aP2eU7i"
	dValue     = "deploy-secret-value-0123456789"
)

func TestRedact(t *testing.T) {
	set := resolvedSet(t, map[string]string{"GH": ghValue, "GH_LONG": ghValue + "XYZ", "DEPLOY": dValue},
		ghToml, deployToml, "[secrets.LONG]\nhosts = [\"x.example\"]\nenv = \"GH_LONG\"\n")
	// The longer value that contains another is replaced whole.
	got := set.Redact("GH_TOKEN=" + ghValue + " LONG=" + ghValue + "XYZ deploy " + dValue + dValue)
	if got != "GH_TOKEN=[secret GH] LONG=[secret LONG] deploy [secret DEPLOY][secret DEPLOY]" {
		t.Errorf("Redact: %s", got)
	}
	var none *Set
	if none.Redact("x") != "x" {
		t.Error("a nil set changes text")
	}
}

func TestInjector(t *testing.T) {
	set := resolvedSet(t, map[string]string{"GH": ghValue, "DEPLOY": dValue}, ghToml, deployToml)
	env := set.Env()
	ghP, dP := env["GH_TOKEN"], env["DEPLOY"]
	if ghP == "" || dP == "" || strings.Contains(ghP, ghValue[4:]) {
		t.Fatalf("env: %v", env)
	}

	in := set.For("api.github.com", 443)
	if in == nil {
		t.Fatal("no injector for a bound host")
	}
	v, used := in.Header("Authorization", "token "+ghP)
	if v != "token "+ghValue || len(used) != 1 || used[0] != "GH" {
		t.Errorf("header: %q %v", v, used)
	}
	// git over HTTPS: Basic credentials carrying the token as password.
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+ghP))
	v, used = in.Header("Authorization", basic)
	if want := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+ghValue)); v != want || len(used) != 1 {
		t.Errorf("basic: %q %v", v, used)
	}
	// Not in a body unless the secret allows it.
	body, used := in.Body([]byte(`{"token":"` + ghP + `"}`))
	if strings.Contains(string(body), ghValue) || len(used) != 0 {
		t.Errorf("body replaced without bodies = true: %s", body)
	}
	// Another secret's placeholder is not replaced for this host.
	if v, _ := in.Header("X-Deploy", dP); v != dP {
		t.Errorf("DEPLOY put into a request to GitHub: %q", v)
	}

	// Hosts: not the apex of a wildcard only, not another port, not another host.
	if set.For("github.com", 443) == nil || set.For("evil.example", 443) != nil || set.For("api.github.com", 80) != nil {
		t.Error("For matched the wrong hosts")
	}
	d := set.For("127.0.0.1", 8443)
	body, used = d.Body([]byte("key=" + dP + "&again=" + dP))
	if string(body) != "key="+dValue+"&again="+dValue || len(used) != 1 {
		t.Errorf("body with bodies = true: %s %v", body, used)
	}
	if len(dP) != len(dValue) {
		t.Errorf("a placeholder's length differs from its value's: body lengths would change")
	}
	// Responses: a value echoed back is masked before the sandbox sees it.
	masked := set.Mask([]byte("error: bad token " + ghValue))
	if string(masked) != "error: bad token "+ghP {
		t.Errorf("Mask: %s", masked)
	}
	var nilIn *Injector
	if v, u := nilIn.Header("a", "b"); v != "b" || u != nil {
		t.Error("a nil injector changes headers")
	}
}
