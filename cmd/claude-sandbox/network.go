package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/config"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// networkMode is the launch's mode: --no-network is none, and may not
// contradict an explicit --network.
func (a *app) networkMode(changed func(string) bool) (string, error) {
	if a.opts.NoNetwork {
		if changed("network") && a.opts.Network != launch.NetNone {
			return "", &usageError{msg: "--no-network and --network " + a.opts.Network + " contradict each other", hint: "--no-network is --network none; give one of them"}
		}
		return launch.NetNone, nil
	}
	return a.opts.Network, nil
}

// networkOn says whether the sandbox reaches the network at all (any mode
// but none), which the vm backend builds into its guest: --network none
// and --no-network build the same guest.
func (a *app) networkOn() bool {
	mode, err := a.networkMode(a.flagChanged)
	return err != nil || mode != launch.NetNone
}

// egress decides the launch's network from its mode and rules. Each rule
// says where it was written: a configuration file's line, or the flag.
func (a *app) egress(mode string) (*launch.Egress, error) {
	getenv := func(name string) (string, bool) {
		v := a.getenv(name)
		return v, v != ""
	}
	return launch.NewEgress(mode, a.rulesFrom("allow", a.opts.Allow), a.rulesFrom("deny", a.opts.Deny), getenv)
}

// rulesFrom attaches to each rule text (after the configuration added its
// own to the flag's) the file and line it comes from.
func (a *app) rulesFrom(key string, texts []string) []control.Rule {
	var files []*config.File
	if st := a.cfg.state; st != nil {
		files = []*config.File{st.user, st.project}
	}
	out := make([]control.Rule, 0, len(texts))
	for _, t := range texts {
		r := control.Rule{Text: t, Source: "--" + key}
		for _, f := range files {
			if s, ok := f.Get(key); ok {
				for _, v := range s.List {
					if v == t {
						r.Source = fmt.Sprintf("%s:%d", f.Path, s.Line)
					}
				}
			}
		}
		out = append(out, r)
	}
	return out
}

// sayNetwork tells what the sandbox's network is, and in allowlist mode
// which rules its packages usually need that it lacks: proposed, never
// allowed without the user writing them down (and trusting the file).
func (a *app) sayNetwork(rt *launch.Runtime) {
	e := rt.Egress
	if e == nil {
		return
	}
	if e.Upstream != "" {
		a.say("network: allowed destinations are reached through the host's proxy %s", redactURL(e.Upstream))
	}
	if missing := launch.SuggestedRules(a.opts.With, e); len(missing) > 0 {
		a.say("network: the packages added with --with usually need %s; to allow them: %s in claude-sandbox.toml, then `claude-sandbox trust`",
			strings.Join(missing, ", "), allowLine(missing))
	}
}

// reportLearned prints what learn mode recorded as the allow line to add
// to the project's claude-sandbox.toml and, with --write-learned, adds it.
func (a *app) reportLearned(project string, learned []string) error {
	if len(learned) == 0 {
		fmt.Fprintln(a.stderr, "claude-sandbox: learn mode: the sandbox reached no destination")
		return nil
	}
	path := filepath.Join(project, "claude-sandbox.toml")
	if _, err := os.Stat(filepath.Join(project, ".claude-sandbox.toml")); err == nil {
		path = filepath.Join(project, ".claude-sandbox.toml")
	}
	diff, updated, err := config.AddToList(path, "allow", learned)
	if err != nil {
		return err
	}
	if diff == "" {
		fmt.Fprintf(a.stderr, "claude-sandbox: learn mode: %s already allows everything the sandbox reached\n", path)
		return nil
	}
	fmt.Fprintf(a.stderr, "claude-sandbox: learn mode: what the sandbox reached, as the rules to allow it in allowlist mode:\n%s", diff)
	if !a.opts.WriteLearned {
		fmt.Fprintf(a.stderr, "claude-sandbox: add them with --write-learned (or by hand), then run `claude-sandbox trust %s`\n", project)
		return nil
	}
	if err := config.WriteFile(path, updated); err != nil {
		return err
	}
	fmt.Fprintf(a.stderr, "claude-sandbox: wrote %s; it widens access, so run `claude-sandbox trust %s` before its next launch\n", path, project)
	return nil
}

func allowLine(rules []string) string {
	q := make([]string, len(rules))
	for i, r := range rules {
		q[i] = fmt.Sprintf("%q", r)
	}
	return "allow = [" + strings.Join(q, ", ") + "]"
}

// redactURL drops a URL's credentials (a proxy URL can carry a password).
func redactURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return u
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		rest = "…@" + rest[at+1:]
	}
	return scheme + "://" + rest
}
