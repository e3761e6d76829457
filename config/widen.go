package config

import (
	"fmt"

	"github.com/claude-sandbox/claude-sandbox/secrets"
	"slices"
	"sort"
	"strings"
)

// Widening is one project setting that gives the sandbox more access than
// the user's own choice (their file, else the built-in default).
type Widening struct {
	Setting Setting
	Why     string
}

func (w Widening) String() string {
	if w.Setting.Key.Kind == Table {
		if w.Setting.Line > 0 {
			return fmt.Sprintf("line %d: [%s]: %s", w.Setting.Line, w.Setting.Key.Name, w.Why)
		}
		return fmt.Sprintf("[%s]: %s", w.Setting.Key.Name, w.Why)
	}
	if w.Setting.Line > 0 {
		return fmt.Sprintf("line %d: %s = %s: %s", w.Setting.Line, w.Setting.Key.Name, w.Setting.Value(), w.Why)
	}
	return fmt.Sprintf("%s = %s: %s", w.Setting.Key.Name, w.Setting.Value(), w.Why)
}

// Defaults gives the built-in value of a Bool key (what its flag means
// when nobody sets it); ok is false for a key without one.
type Defaults func(key string) (value bool, ok bool)

// Widenings lists what the project file widens. Adding packages, choosing
// a backend or accelerator, and narrowing (network off, fewer host mounts,
// a read-only .git) never do; passing host variables or tokens in, opening
// what the user keeps closed, extra NixOS modules (code run as root in the
// guest) and a different nixpkgs (the code every package is built from) do.
func Widenings(project, user *File, defaults Defaults) []Widening {
	if project == nil {
		return nil
	}
	var out []Widening
	for _, s := range project.Settings {
		base, haveBase := user.Get(s.Key.Name)
		if s.Key.Name == "ssh-keys" {
			// Without the user's list every key is allowed: a project's
			// list can only narrow that.
			var extra []string
			for _, v := range s.List {
				if haveBase && !slices.Contains(base.List, v) {
					extra = append(extra, v)
				}
			}
			if len(extra) > 0 {
				out = append(out, Widening{s, fmt.Sprintf("lets the sandbox use the SSH agent's keys %s, which your ssh-keys leave out", strings.Join(extra, ", "))})
			}
			continue
		}
		switch {
		case s.Key.Kind == Bool && s.Key.Grants != nil:
			grants := *s.Key.Grants
			if s.Bool != grants {
				continue
			}
			baseValue, known := base.Bool, haveBase
			if !known && defaults != nil {
				baseValue, known = defaults(s.Key.Name)
			}
			if known && baseValue == grants {
				continue
			}
			out = append(out, Widening{s, boolWhy(s.Key.Name)})
		case s.Key.AlwaysWidens && s.Key.Kind == List:
			var extra []string
			for _, v := range s.List {
				if !slices.Contains(base.List, v) {
					extra = append(extra, v)
				}
			}
			if len(extra) == 0 {
				continue
			}
			out = append(out, Widening{s, listWhy(s.Key.Name, extra)})
		case s.Key.Ranks != nil:
			from := ""
			if haveBase {
				from = base.Str
			} else if d, ok := stringDefault(s.Key); ok {
				from = d
			}
			if slices.Index(s.Key.Ranks, s.Str) > slices.Index(s.Key.Ranks, from) {
				out = append(out, Widening{s, rankWhy(s.Key.Name, from, s.Str)})
			}
		case s.Key.AlwaysWidens && s.Key.Kind == String:
			if haveBase && base.Str == s.Str {
				continue
			}
			out = append(out, Widening{s, fmt.Sprintf("builds the sandbox from nixpkgs %q instead of your choice: every package comes from its code", s.Str)})
		}
	}
	out = append(out, secretWidenings(project, user, defaults)...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Setting.Line < out[j].Setting.Line })
	return out
}

// secretWidenings are the project's [secrets] tables that give the
// sandbox more than the user's own bindings do: a new secret, another
// source, more hosts, bodies.
func secretWidenings(project, user *File, defaults Defaults) []Widening {
	if project.Secrets == nil {
		return nil
	}
	gh, known := false, false
	if s, ok := user.Get("gh-token"); ok {
		gh, known = s.Bool, true
	}
	if !known && defaults != nil {
		gh, _ = defaults("gh-token")
	}
	base, err := secrets.Effective(gh, SecretsOf(user))
	if err != nil {
		base, _ = secrets.Effective(gh)
	}
	var out []Widening
	for _, w := range secrets.Widenings(project.Secrets, base) {
		out = append(out, Widening{Setting{Key: Key{Name: secrets.Table + "." + w.Name, Kind: Table}, Line: w.Line}, w.Why})
	}
	return out
}

func boolWhy(key string) string {
	switch key {
	case "network":
		return "turns the network on, which your settings keep off"
	case "nix-daemon":
		return "gives the sandbox Nix through the daemon gateway, which your settings keep out"
	case "nix-unsandboxed-builds":
		return "lets the sandbox run builds on the host's Nix daemon outside any build sandbox"
	case "desktop":
		return "forwards display, audio, D-Bus, keyring and GPU, which your settings keep out"
	case "protect":
		return "lets the sandbox change what the host runs by itself: Claude Code's settings and hooks in ~/.claude, the project's .claude/, .mcp.json, .envrc, .vscode/, .idea/, git's config and hooks"
	case "protect-git":
		return "lets the sandbox rewrite .git/config and .git/hooks (code git runs on the host)"
	case "gh-token":
		return "lets requests from the sandbox to GitHub carry your GH_TOKEN and GITHUB_TOKEN"
	case "sudo":
		return "re-runs claude-sandbox through sudo, as root"
	}
	return "gives the sandbox more access"
}

// stringDefault is a ranked setting's value when nobody sets it: the
// choice listed first.
func stringDefault(k Key) (string, bool) {
	if len(k.Choices) == 0 {
		return "", false
	}
	return k.Choices[0], true
}

func rankWhy(key, from, to string) string {
	if key == "network" {
		return fmt.Sprintf("opens the network from %s to %s", from, to)
	}
	return fmt.Sprintf("gives the sandbox more access (%s instead of %s)", to, from)
}

func listWhy(key string, extra []string) string {
	switch key {
	case "allow":
		return "lets the sandbox reach " + strings.Join(extra, ", ")
	case "env":
		return "passes host environment variables in: " + strings.Join(extra, ", ")
	case "modules":
		return "adds NixOS modules, code run as root in the container or VM: " + strings.Join(extra, ", ")
	case "unprotect":
		return "lets the sandbox change what the host runs or obeys by itself: " + strings.Join(extra, ", ")
	}
	return "adds " + strings.Join(extra, ", ")
}
