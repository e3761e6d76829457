package launch

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// passedThrough is the whole default allowlist of host variables. Anything
// else (tokens, cloud credentials, the user's shell setup) stays outside
// unless named with --env.
var passedThrough = []string{
	"TERM", "COLORTERM", "LANG", "LANGUAGE", "TZ",
	"LC_ALL", "LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY", "LC_MESSAGES",
	"LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION",
	"ANTHROPIC_API_KEY",
}

// ghTokens cross only with --gh-token: a token in the environment is
// usually there for the user's own tools, not for the agent.
var ghTokens = []string{"GH_TOKEN", "GITHUB_TOKEN"}

var envName = lazyregexp.New(`^[A-Za-z_][A-Za-z0-9_]*$`)

// EnvNameError is a --env argument that is not a variable name.
type EnvNameError struct{ Name string }

func (e *EnvNameError) Error() string {
	return fmt.Sprintf("--env %q: not an environment variable name", e.Name)
}
func (e *EnvNameError) Hint() string {
	return "pass the name only (--env NAME); its value is taken from your environment"
}

// reserved are set by the sandbox itself; --env cannot replace them.
var reserved = map[string]bool{
	"PATH": true, "HOME": true, "USER": true, "LOGNAME": true, "SHELL": true,
	"NIX_LD": true, "NIX_LD_LIBRARY_PATH": true, "NIX_REMOTE": true, "XDG_RUNTIME_DIR": true,
	"CLAUDE_SANDBOX": true, "CLAUDE_SANDBOX_BACKEND": true,
}

// SandboxEnv computes the complete environment of the sandbox. It is the
// environment bwrap is executed with, so values never appear on a command
// line (where other users could read them in /proc/PID/cmdline).
func SandboxEnv(m *manifest.Manifest, rt *Runtime) ([]string, error) {
	env := map[string]string{}
	for _, name := range passedThrough {
		if v, ok := rt.lookupEnv(name); ok {
			env[name] = v
		}
	}
	if rt.GHToken {
		for _, name := range ghTokens {
			if v, ok := rt.lookupEnv(name); ok {
				env[name] = v
			}
		}
	}
	// glibc finds locales through LOCALE_ARCHIVE on NixOS, where it names
	// /run/current-system/…, absent inside: the store path it resolves to
	// is what the sandbox can open.
	if v, ok := rt.lookupEnv("LOCALE_ARCHIVE"); ok {
		if real, err := filepath.EvalSymlinks(v); err == nil && strings.HasPrefix(real, manifest.StoreDir+"/") {
			env["LOCALE_ARCHIVE"] = real
		}
	}
	for _, name := range rt.ExtraEnv {
		if !envName.MatchString(name) || reserved[name] {
			return nil, &EnvNameError{Name: name}
		}
		if v, ok := rt.lookupEnv(name); ok {
			env[name] = v
		}
	}
	if env["TERM"] == "" {
		env["TERM"] = "xterm-256color"
	}
	env["PATH"] = strings.Join(m.Path, ":")
	env["HOME"] = rt.Home
	env["USER"] = rt.User
	env["LOGNAME"] = rt.User
	env["SHELL"] = "/bin/bash"
	env["NIX_LD"] = m.NixLd.NixLd
	env["NIX_LD_LIBRARY_PATH"] = m.NixLd.NixLdLibraryDir
	env["CLAUDE_SANDBOX"] = "1"
	env["CLAUDE_SANDBOX_BACKEND"] = m.Backend

	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out, nil
}
