package launch

import (
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// sudoKept are the variables --sudo carries through sudo besides the
// sandbox's allowlist and --env names: what picks nixpkgs, and what the
// host forwarding reads (display, buses, agent sockets).
var sudoKept = []string{
	"CLAUDE_SANDBOX_NIXPKGS", "NIX_PATH", "NIX_DAEMON_SOCKET_PATH",
	"DISPLAY", "XAUTHORITY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "XDG_SESSION_TYPE", "XDG_CURRENT_DESKTOP",
	"DBUS_SESSION_BUS_ADDRESS", "DBUS_SYSTEM_BUS_ADDRESS", "SSH_AUTH_SOCK",
	"PULSE_SERVER", "PIPEWIRE_REMOTE", "GNOME_KEYRING_CONTROL",
}

// SudoReexec runs this very command again through sudo (--sudo): sudo's
// own policy decides, it asks for the password, and of the environment only
// the names the sandbox may receive survive (sudo --preserve-env=NAMES; the
// values never appear on a command line). It returns only on failure.
func SudoReexec(args, extraEnv []string) error {
	sudo, err := exec.LookPath("sudo")
	if err != nil {
		return &NotRootError{Backend: "container", Reason: "--sudo: sudo is not installed"}
	}
	exe, err := os.Executable()
	if err != nil {
		return &NotRootError{Backend: "container", Reason: "--sudo: cannot find the claude-sandbox executable: " + err.Error()}
	}
	err = unix.Exec(sudo, sudoArgv(exe, args, extraEnv, os.LookupEnv), os.Environ())
	return &NotRootError{Backend: "container", Reason: "--sudo: running sudo: " + err.Error()}
}

// sudoArgv is sudo's command line: names of variables to keep, never values.
func sudoArgv(exe string, args, extraEnv []string, lookupEnv func(string) (string, bool)) []string {
	var keep []string
	seen := map[string]bool{}
	for _, list := range [][]string{passedThrough, ghTokens, sudoKept, extraEnv} {
		for _, name := range list {
			if _, set := lookupEnv(name); set && !seen[name] && envName.MatchString(name) && !containerEnvDenied(name) {
				seen[name] = true
				keep = append(keep, name)
			}
		}
	}
	argv := []string{"sudo"}
	if len(keep) > 0 {
		argv = append(argv, "--preserve-env="+strings.Join(keep, ","))
	}
	argv = append(argv, "--", exe)
	return append(argv, args...)
}
