package launch

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// The environment policy: every variable a launch knows, and what may
// happen to it. Anything not in this table (tokens, cloud credentials, the
// user's shell set-up) stays outside unless named with --env, and its
// value is never printed.
type envUse uint8

const (
	// passed crosses from the host into every sandbox: the allowlist.
	passed envUse = 1 << iota
	// ghToken crosses only with --gh-token: a token in the environment is
	// usually there for the user's own tools, not for the agent.
	ghToken
	// setInside is set by the sandbox itself; --env cannot replace it.
	setInside
	// readOnHost is read by the launch on the host (host forwarding, which
	// nixpkgs, the locale): --sudo keeps it.
	readOnHost
	// shown: --dry-run prints its value. Everything else shows as
	// <redacted>: an API key, a token, an --env opt-in.
	shown
)

// envPolicy is a slice, not a map: a map literal costs every run of the
// program its construction, the slice is laid out by the linker.
var envPolicy = []envVar{
	{"TERM", passed | shown}, {"COLORTERM", passed | shown}, {"LANG", passed | shown}, {"LANGUAGE", passed | shown}, {"TZ", passed | shown},
	{"LC_ALL", passed | shown}, {"LC_CTYPE", passed | shown}, {"LC_NUMERIC", passed | shown}, {"LC_TIME", passed | shown},
	{"LC_COLLATE", passed | shown}, {"LC_MONETARY", passed | shown}, {"LC_MESSAGES", passed | shown}, {"LC_PAPER", passed | shown},
	{"LC_NAME", passed | shown}, {"LC_ADDRESS", passed | shown}, {"LC_TELEPHONE", passed | shown}, {"LC_MEASUREMENT", passed | shown},
	{"LC_IDENTIFICATION", passed | shown},
	{"ANTHROPIC_API_KEY", passed},

	{"GH_TOKEN", ghToken}, {"GITHUB_TOKEN", ghToken},

	{"PATH", setInside | shown}, {"HOME", setInside | shown}, {"USER", setInside | shown}, {"LOGNAME", setInside | shown},
	{"SHELL", setInside | shown}, {"NIX_LD", setInside | shown}, {"NIX_LD_LIBRARY_PATH", setInside | shown},
	{"CLAUDE_SANDBOX", setInside | shown}, {"CLAUDE_SANDBOX_BACKEND", setInside | shown},
	{"NIX_REMOTE", setInside | shown}, // daemon, when its socket is forwarded
	{"XDG_RUNTIME_DIR", setInside | readOnHost | shown},

	// glibc's locale archive: a store path inside (SandboxEnv).
	{"LOCALE_ARCHIVE", readOnHost | shown},
	// Which nixpkgs a build uses.
	{"CLAUDE_SANDBOX_NIXPKGS", readOnHost | shown}, {"NIX_PATH", readOnHost | shown},
	// What host forwarding reads; inside, they name the forwarded paths.
	{"NIX_DAEMON_SOCKET_PATH", readOnHost | shown}, {"SSH_AUTH_SOCK", readOnHost | shown},
	{"DISPLAY", readOnHost | shown}, {"XAUTHORITY", readOnHost | shown}, {"WAYLAND_DISPLAY", readOnHost | shown},
	{"XDG_SESSION_TYPE", readOnHost | shown}, {"XDG_CURRENT_DESKTOP", readOnHost | shown},
	{"DBUS_SESSION_BUS_ADDRESS", readOnHost | shown}, {"DBUS_SYSTEM_BUS_ADDRESS", readOnHost | shown},
	{"PULSE_SERVER", readOnHost | shown}, {"PIPEWIRE_REMOTE", readOnHost | shown}, {"GNOME_KEYRING_CONTROL", readOnHost | shown},

	// What a backend gives the program it executes (systemd-nspawn).
	{"SYSTEMD_NSPAWN_LOCK", shown},
}

type envVar struct {
	name string
	use  envUse
}

// policy returns what may happen to a variable (0: nothing).
func policy(name string) envUse {
	for _, v := range envPolicy {
		if v.name == name {
			return v.use
		}
	}
	return 0
}

func namesWith(use envUse) []string {
	var out []string
	for _, v := range envPolicy {
		if v.use&use != 0 {
			out = append(out, v.name)
		}
	}
	sort.Strings(out)
	return out
}

// ShownOnDryRun says whether --dry-run may print a variable's value.
func ShownOnDryRun(name string) bool { return policy(name)&shown != 0 }

// KeptBySudo lists the variables --sudo carries through sudo (besides the
// --env names): the sandbox's allowlist and what the launch reads on the
// host.
func KeptBySudo() []string { return namesWith(passed | ghToken | readOnHost) }

var envName = lazyregexp.New(`^[A-Za-z_][A-Za-z0-9_]*$`)

// EnvNameError is a --env argument that is not a variable name.
type EnvNameError struct{ Name string }

func (e *EnvNameError) Error() string {
	return fmt.Sprintf("--env %q: not an environment variable name", e.Name)
}
func (e *EnvNameError) Hint() string {
	return "pass the name only (--env NAME); its value is taken from your environment"
}

// SteersRoot says whether a variable changes how a program running as root
// behaves before any sandbox exists (systemd-nspawn, the dynamic loader,
// this binary re-run through sudo): such a variable never crosses a root
// boundary.
func SteersRoot(name string) bool {
	for _, p := range []string{"LD_", "SYSTEMD_", "LISTEN_", "GCONV_", "MALLOC_"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	switch name {
	case "NOTIFY_SOCKET", "LOCPATH", "NLSPATH", "HOSTALIASES", "TMPDIR", "container", "container_uuid":
		return true
	}
	return false
}

// SandboxEnv computes the environment of the sandboxed program for rt's
// user: the allowlist, opt-ins and the sandbox's own variables. Backends
// hand it to the program through their own process environment, never as
// arguments (where other users could read it in /proc/PID/cmdline).
func SandboxEnv(m *manifest.Manifest, rt *Runtime) ([]string, error) {
	env := map[string]string{}
	for _, e := range envPolicy {
		if rt.withheld(e.name) {
			continue
		}
		if e.use&passed != 0 || e.use&ghToken != 0 && rt.GHToken {
			if v, ok := rt.lookupEnv(e.name); ok {
				env[e.name] = v
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
		if !envName.MatchString(name) || policy(name)&setInside != 0 {
			return nil, &EnvNameError{Name: name}
		}
		if v, ok := rt.lookupEnv(name); ok && !rt.withheld(name) {
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
