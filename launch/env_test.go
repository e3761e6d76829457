package launch_test

import (
	"slices"
	"strings"
	"sync"
	"testing"

	. "github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/internal/launchtest"
)

// desktopHost is a host where every forwarded resource exists and every
// variable a launch could read is set.
func desktopHost(read func(string)) Host {
	vars := map[string]string{
		"DISPLAY": ":3", "XAUTHORITY": "/home/u/.Xauth", "WAYLAND_DISPLAY": "wayland-1", "XDG_SESSION_TYPE": "wayland", "XDG_CURRENT_DESKTOP": "GNOME",
		"XDG_RUNTIME_DIR": "/run/user/1000", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus", "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/run/dbus/system_bus_socket",
		"SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1", "GNOME_KEYRING_CONTROL": "/run/user/1000/keyring", "PULSE_SERVER": "unix:/run/user/1000/pulse/native",
		"PIPEWIRE_REMOTE": "pipewire-0", "NIX_DAEMON_SOCKET_PATH": "/nix/var/nix/daemon-socket/socket",
		"TERM": "xterm", "COLORTERM": "truecolor", "LANG": "C.UTF-8", "LANGUAGE": "en", "TZ": "UTC", "LC_ALL": "C.UTF-8", "LC_CTYPE": "C.UTF-8",
		"LC_TIME": "C", "LC_MESSAGES": "C", "LC_PAPER": "C", "LC_IDENTIFICATION": "C", "LOCALE_ARCHIVE": "/nix/store/x-glibc-locales/lib/locale/locale-archive",
		"ANTHROPIC_API_KEY": "sk-secret", "GH_TOKEN": "gh-secret", "GITHUB_TOKEN": "gh-secret", "MY_OPT_IN": "mine", "AWS_SECRET_ACCESS_KEY": "aws",
	}
	h := launchtest.Host(vars, []string{
		"/tmp/.X11-unix/X3", "/run/user/1000/wayland-1", "/run/user/1000/bus", "/run/dbus/system_bus_socket",
		"/run/user/1000/pulse/native", "/run/user/1000/pipewire-0", "/tmp/ssh-x/agent.1", "/nix/var/nix/daemon-socket/socket",
	}, []string{"/run/user/1000", "/run/user/1000/keyring", "/dev/dri"}, []string{"/home/u/.Xauth", "/run/opengl-driver"})
	lookup := h.LookupEnv
	h.LookupEnv = func(name string) (string, bool) { read(name); return lookup(name) }
	return h
}

// TestSudoKeepsEveryVariableALaunchReads: --sudo re-runs the launch as
// root with the environment sudo keeps; every variable the launch reads on
// the host must survive it, or the re-run forwards less than the user has.
func TestSudoKeepsEveryVariableALaunchReads(t *testing.T) {
	var mu sync.Mutex
	read := map[string]bool{}
	h := desktopHost(func(name string) { mu.Lock(); read[name] = true; mu.Unlock() })
	rt := &Runtime{Home: "/home/u", User: "u", Network: true, NixDaemon: true, GHToken: true, LookupEnv: h.LookupEnv}
	h.Forwards(rt)
	if _, err := SandboxEnv(launchtest.Manifest(), rt); err != nil {
		t.Fatal(err)
	}
	kept := KeptBySudo()
	for name := range read {
		if !slices.Contains(kept, name) {
			t.Errorf("a launch reads $%s, which --sudo drops", name)
		}
	}
	for _, name := range []string{"DISPLAY", "LOCALE_ARCHIVE", "ANTHROPIC_API_KEY", "GH_TOKEN", "CLAUDE_SANDBOX_NIXPKGS"} {
		if !slices.Contains(kept, name) {
			t.Errorf("--sudo drops $%s", name)
		}
	}
	for _, name := range []string{"AWS_SECRET_ACCESS_KEY", "LD_PRELOAD", "HOME", "PATH"} {
		if slices.Contains(kept, name) {
			t.Errorf("--sudo keeps $%s", name)
		}
	}
}

// TestDryRunShowsAllButSecrets: --dry-run prints the value of every
// variable the sandbox gets, except those that may be secrets (the API
// key, tokens, --env opt-ins), which show as <redacted>.
func TestDryRunShowsAllButSecrets(t *testing.T) {
	h := desktopHost(func(string) {})
	rt := &Runtime{Home: "/home/u", User: "u", Network: true, NixDaemon: true, GHToken: true, ExtraEnv: []string{"MY_OPT_IN"}, LookupEnv: h.LookupEnv}
	env, err := SandboxEnv(launchtest.Manifest(), rt)
	if err != nil {
		t.Fatal(err)
	}
	env = MergeEnv(env, h.Forwards(rt).Env)
	printed := (&Invocation{Env: env}).Printable().Env
	secret := map[string]bool{"ANTHROPIC_API_KEY": true, "GH_TOKEN": true, "GITHUB_TOKEN": true, "MY_OPT_IN": true}
	for _, kv := range printed {
		name, value, _ := strings.Cut(kv, "=")
		switch {
		case secret[name] && value != "<redacted>":
			t.Errorf("--dry-run prints %s", kv)
		case !secret[name] && value == "<redacted>":
			t.Errorf("--dry-run hides $%s, which is no secret", name)
		}
	}
	if len(printed) < 30 {
		t.Errorf("only %d variables: %q", len(printed), printed)
	}
}
