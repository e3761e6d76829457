package secrets

import (
	"fmt"
	"strings"
	"time"
)

// SourceKind is where a secret's real value comes from.
type SourceKind string

const (
	FromEnv     SourceKind = "env"     // a variable of the host environment
	FromCommand SourceKind = "command" // a command's standard output
	FromFile    SourceKind = "file"    // a file (sops-nix, agenix, systemd credentials, …)
)

// Source is a secret's source.
type Source struct {
	Kind    SourceKind
	Env     string   // FromEnv: the host variable
	Command []string // FromCommand: argv, run without a shell
	File    string   // FromFile: an absolute path
	// Timeout bounds a command (zero: DefaultTimeout).
	Timeout time.Duration
}

// String describes the source for people, never a value: "env NAME",
// "command pass show x", "file /run/agenix/x".
func (s Source) String() string {
	switch s.Kind {
	case FromEnv:
		return "env " + s.Env
	case FromCommand:
		return "command " + strings.Join(s.Command, " ")
	case FromFile:
		return "file " + s.File
	}
	return "no source"
}

func (s Source) equal(o Source) bool {
	return s.Kind == o.Kind && s.Env == o.Env && s.File == o.File &&
		strings.Join(s.Command, "\x00") == strings.Join(o.Command, "\x00")
}

// Binding is one secret: its name (the key under [secrets]), the variable
// it fills inside the sandbox, the hosts it may be sent to, whether
// request bodies may carry it, and its source.
type Binding struct {
	Name     string
	Variable string // default: Name
	Hosts    []HostPattern
	// Bodies: the proxy replaces the placeholder in request bodies too,
	// not only in headers (opt-in: a body is data the sandbox composed,
	// and may echo the secret back to it through the bound host).
	Bodies bool
	Source Source
	// Prefix is the public prefix a placeholder keeps; empty: the known
	// prefix of the value's format, if any.
	Prefix  string
	BuiltIn bool
	// Path and Line: where it was last configured (empty for a built-in).
	Path string
	Line int

	set fieldSet // which fields a file set (for layering)
}

type fieldSet uint8

const (
	setVariable fieldSet = 1 << iota
	setHosts
	setBodies
	setSource
	setPrefix
	setTimeout
)

// HostTexts are the hosts as written.
func (b Binding) HostTexts() []string {
	out := make([]string, len(b.Hosts))
	for i, h := range b.Hosts {
		out[i] = h.Text
	}
	return out
}

// MatchesHost says whether the secret may go to host:port.
func (b Binding) MatchesHost(host string, port int) bool {
	for _, h := range b.Hosts {
		if h.Matches(host, port) {
			return true
		}
	}
	return false
}

func (b Binding) where() string {
	switch {
	case b.Path != "" && b.Line > 0:
		return fmt.Sprintf("%s:%d", b.Path, b.Line)
	case b.Path != "":
		return b.Path
	}
	return "built-in"
}

// GitHub's hosts for a token: git over HTTPS talks to github.com; gh and
// the REST and GraphQL APIs to api.github.com; gh uploads release assets
// to uploads.github.com. gh (go-gh) sends its token to its host and the
// names below it, which *.github.com covers.
var githubHosts = []string{"github.com", "*.github.com"}

// builtIns are the secrets claude-sandbox binds without configuration.
// The GitHub tokens only with --gh-token (or a [secrets.GH_TOKEN] table).
var builtIns = []struct {
	name  string
	hosts []string
	gh    bool
}{
	{"ANTHROPIC_API_KEY", []string{"api.anthropic.com"}, false},
	{"GH_TOKEN", githubHosts, true},
	{"GITHUB_TOKEN", githubHosts, true},
}

func builtIn(name string) (Binding, bool) {
	for _, bi := range builtIns {
		if bi.name != name {
			continue
		}
		b := Binding{Name: name, Variable: name, BuiltIn: true, Source: Source{Kind: FromEnv, Env: name}}
		for _, h := range bi.hosts {
			p, err := ParseHost(h)
			if err != nil {
				panic("secrets: bad built-in host " + h) // a programming error, caught by every test run
			}
			b.Hosts = append(b.Hosts, p)
		}
		return b, true
	}
	return Binding{}, false
}

// BuiltIns are the secrets bound without configuration: ANTHROPIC_API_KEY
// for Anthropic's API, and with ghToken (--gh-token) GH_TOKEN and
// GITHUB_TOKEN for GitHub. Each reads the host variable of its own name;
// a built-in whose variable is not set is simply absent (no warning).
func BuiltIns(ghToken bool) []Binding {
	var out []Binding
	for _, bi := range builtIns {
		if bi.gh && !ghToken {
			continue
		}
		b, _ := builtIn(bi.name)
		out = append(out, b)
	}
	return out
}
