package launch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/claude-sandbox/claude-sandbox/secrets"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// The network of a sandbox. No sandbox shares the host's network
// namespace, in any mode: each has its own, with only loopback, and its one
// way out is its supervisor's proxy, which listens on that loopback
// (127.0.0.1:ProxyPort) and decides every destination by the rules. So a
// program that ignores the proxy variables simply has no network, and the
// host's loopback services and abstract Unix sockets are out of reach
// unless a rule names them.

// Network modes (--network).
const (
	NetAllowlist = "allowlist" // the allow rules, and what Claude Code needs
	NetOpen      = "open"      // every public destination
	NetLearn     = "learn"     // open, and the rules it used are printed at the end
	NetNone      = "none"      // no proxy: loopback only
)

// NetworkModes lists the modes, the default first.
func NetworkModes() []string { return []string{NetAllowlist, NetOpen, NetLearn, NetNone} }

// ProxyPort is where a sandbox's proxy listens on its own loopback: HTTP
// (CONNECT and plain requests) and SOCKS5 on one port.
const ProxyPort = 3128

// Egress is how a sandbox reaches the network.
type Egress struct {
	Mode        string
	Allow, Deny []control.Rule
	// Upstream is the proxy allowed destinations are reached through (a
	// corporate one: the host's HTTPS_PROXY), NoProxy its exceptions.
	Upstream, NoProxy string
}

// NetworkModeError is a --network value that is not a mode.
type NetworkModeError struct{ Mode string }

func (e *NetworkModeError) Error() string {
	return fmt.Sprintf("--network %q: not one of %s", e.Mode, strings.Join(NetworkModes(), ", "))
}
func (e *NetworkModeError) Hint() string {
	return "allowlist (the default) lets through what Claude Code needs and your allow rules; open, learn or none"
}

// claudeCodeHosts are what Claude Code itself reaches, allowed in every
// allowlist: Anthropic's network requirements for Claude Code (its API,
// the claude.ai login and its OAuth token endpoints, feature flags, error
// reports). docs/egress.md lists the source.
func claudeCodeHosts() []string {
	return []string{
		"api.anthropic.com", "claude.ai", "console.anthropic.com", "platform.claude.com",
		"statsig.anthropic.com", "sentry.io", "*.sentry.io",
	}
}

// NewEgress decides a launch's egress from its mode, its rules (each with
// where it was written) and the host's proxy variables: nil for none.
func NewEgress(mode string, allow, deny []control.Rule, getenv func(string) (string, bool)) (*Egress, error) {
	switch mode {
	case NetNone:
		return nil, nil
	case NetAllowlist, NetOpen, NetLearn:
	default:
		return nil, &NetworkModeError{Mode: mode}
	}
	e := &Egress{Mode: mode, Deny: deny}
	if mode == NetAllowlist {
		for _, h := range claudeCodeHosts() {
			e.Allow = append(e.Allow, control.Rule{Text: h, Source: "built in: what Claude Code needs"})
		}
	}
	e.Allow = append(e.Allow, allow...)
	for _, names := range [][2]string{{"HTTPS_PROXY", "https_proxy"}, {"ALL_PROXY", "all_proxy"}} {
		for _, name := range names {
			if v, ok := getenv(name); ok && v != "" && e.Upstream == "" {
				e.Upstream = v
			}
		}
	}
	for _, name := range []string{"NO_PROXY", "no_proxy"} {
		if v, ok := getenv(name); ok && v != "" && e.NoProxy == "" {
			e.NoProxy = v
		}
	}
	return e, nil
}

// ProxyEnv are the variables that point programs inside at the proxy.
// "localhost" (and ::1) is the sandbox itself, not proxied: its own dev
// servers answer there. An address, 127.0.0.1 included, goes through the
// proxy, which refuses the host's loopback unless a rule names the address
// (allow = ["127.0.0.1:5432"] reaches the host's database, and only it).
func ProxyEnv(e *Egress) map[string]string {
	if e == nil {
		return nil
	}
	http := "http://127.0.0.1:" + strconv.Itoa(ProxyPort)
	socks := "socks5h://127.0.0.1:" + strconv.Itoa(ProxyPort)
	noProxy := "localhost,::1"
	return map[string]string{
		"HTTP_PROXY": http, "HTTPS_PROXY": http, "http_proxy": http, "https_proxy": http,
		"ALL_PROXY": socks, "all_proxy": socks,
		"NO_PROXY": noProxy, "no_proxy": noProxy,
	}
}

// networkNotice tells Claude Code how the sandbox reaches the network.
func networkNotice(e *Egress) string {
	if e == nil {
		return "There is no network."
	}
	s := fmt.Sprintf("The network is reachable only through a proxy at 127.0.0.1:%d (HTTP_PROXY, HTTPS_PROXY and ALL_PROXY point there; a program that ignores them has no network). ", ProxyPort)
	switch e.Mode {
	case NetAllowlist:
		s += "It lets through only an allowlist of destinations; "
	default:
		s += "It lets through public destinations; "
	}
	return s + "a refused request gets HTTP 403 (or a SOCKS error) naming the destination and the line of claude-sandbox.toml that would allow it: ask the user to add it there and trust it on the host. The host's own services on localhost are not reachable."
}

// suggestedHosts are the destinations a package usually needs, by the
// attribute name it is added with (--with): proposed in allowlist mode,
// never allowed without the user writing them down.
func suggestedHosts(pkg string) []string {
	root, _, _ := strings.Cut(pkg, ".")
	switch {
	case strings.HasPrefix(root, "python") || root == "uv" || root == "poetry":
		return []string{"pypi.org", "files.pythonhosted.org"}
	case root == "nodejs" || strings.HasPrefix(root, "nodejs_") || root == "bun" || root == "yarn" || root == "pnpm" || root == "nodePackages":
		return []string{"registry.npmjs.org"}
	case root == "cargo" || root == "rustc" || root == "rustup":
		return []string{"crates.io", "index.crates.io", "static.crates.io"}
	case root == "go" || strings.HasPrefix(root, "go_"):
		return []string{"proxy.golang.org", "sum.golang.org"}
	case root == "git" || root == "gh" || root == "gitFull":
		return []string{"github.com", "*.github.com", "*.githubusercontent.com"}
	case root == "rubyPackages" || strings.HasPrefix(root, "ruby"):
		return []string{"rubygems.org", "index.rubygems.org"}
	}
	return nil
}

// SuggestedRules are the allow rules the packages of a launch usually
// need and its rules do not have yet.
func SuggestedRules(packages []string, e *Egress) []string {
	if e == nil || e.Mode != NetAllowlist {
		return nil
	}
	have := map[string]bool{}
	for _, r := range e.Allow {
		have[r.Text] = true
	}
	var out []string
	for _, p := range packages {
		for _, h := range suggestedHosts(p) {
			if !have[h] {
				have[h] = true
				out = append(out, h)
			}
		}
	}
	return out
}

// RuleError is an allow or deny rule the proxy could not use, with where
// it was written.
type RuleError struct {
	Rule, Source, Msg, hint string
}

func (e *RuleError) Error() string {
	if e.Source != "" && !strings.HasPrefix(e.Source, "--") {
		return fmt.Sprintf("%s: %q: %s", e.Source, e.Rule, e.Msg)
	}
	return fmt.Sprintf("%s %q: %s", e.Source, e.Rule, e.Msg)
}
func (e *RuleError) Hint() string {
	if e.hint != "" {
		return e.hint
	}
	return "rules are host names (*.example.com for names below), host:port, host METHODS, or addresses and networks with :port; docs/egress.md"
}

// CheckRules has the supervisor program parse a launch's rules before the
// sandbox starts, so that a mistyped rule is an error now rather than a
// proxy that will not start; and look at its secrets' wildcard hosts,
// which must not cover a public suffix. A rule set once found good is remembered in
// cacheDir by its digest: a launch with the same rules asks nothing.
func CheckRules(e *Egress, bindings []secrets.Binding, cacheDir string, getenv func(string) (string, bool)) error {
	if e == nil {
		return nil // no proxy: no rules, and no secret leaves
	}
	var hosts []control.Rule
	for _, b := range bindings {
		for _, p := range b.Hosts {
			if _, wildcard := p.WildcardDomain(); wildcard {
				source := "secrets." + b.Name + ".hosts"
				if b.Path != "" {
					source = fmt.Sprintf("%s:%d (%s)", b.Path, b.Line, source)
				}
				hosts = append(hosts, control.Rule{Text: p.Text, Source: source})
			}
		}
	}
	if len(e.Allow)+len(e.Deny)+len(hosts) == 0 {
		return nil
	}
	h := sha256.New()
	for _, list := range [][]control.Rule{e.Allow, e.Deny, hosts} {
		for _, r := range list {
			fmt.Fprintf(h, "%s\x00", r.Text)
		}
		h.Write([]byte{1})
	}
	mark := filepath.Join(cacheDir, "rules-ok", hex.EncodeToString(h.Sum(nil))[:32])
	if _, err := os.Stat(mark); err == nil {
		return nil
	}
	bin, err := FindSupervisor(getenv)
	if err != nil {
		return err
	}
	in, _ := json.Marshal(control.RulesCheck{Allow: e.Allow, Deny: e.Deny, SecretHosts: hosts})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "check-rules")
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.Output()
	var verdict struct{ Rule, Source, Error, Hint string }
	if jerr := json.Unmarshal(out, &verdict); jerr != nil {
		return fmt.Errorf("checking the network rules with %s: %v", bin, err)
	}
	if verdict.Error != "" {
		return &RuleError{Rule: verdict.Rule, Source: verdict.Source, Msg: verdict.Error, hint: verdict.Hint}
	}
	if err := os.MkdirAll(filepath.Dir(mark), 0o700); err == nil {
		_ = os.WriteFile(mark, nil, 0o600)
	}
	return nil
}
