package launch

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// passedThrough is the whole default allowlist of host variables. Anything
// else (tokens, cloud credentials, the user's shell setup) stays outside
// unless named with --env.
var passedThrough = []string{
	"TERM", "COLORTERM", "LANG", "LANGUAGE", "LC_ALL", "TZ",
	"ANTHROPIC_API_KEY",
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

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
	"NIX_LD": true, "NIX_LD_LIBRARY_PATH": true,
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
