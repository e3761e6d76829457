package launch

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
)

// Runtime holds this run's choices: nothing here changes the closure.
type Runtime struct {
	Project  string   // resolved by ResolveProject
	Command  []string // what to run inside; empty means Claude Code
	Shell    bool     // bash instead of Claude Code
	Network  bool
	ExtraEnv []string // --env NAMEs
	Home     string   // $HOME inside (the host's path, on an empty tmpfs)
	User     string
	// LookupEnv reads the host environment (os.LookupEnv when nil).
	LookupEnv func(string) (string, bool)
	// EUID is the effective uid to check privileges against (os.Geteuid when nil).
	EUID func() int

	// What the sandbox is given beyond the project (bubblewrap; see bwrap.go).
	StateDir   string  // ProjectStateDir(Project): persistent ~/.local, /tmp, browser profile, tmux socket
	GHToken    bool    // --gh-token: pass GH_TOKEN and GITHUB_TOKEN
	ProtectGit bool    // --protect-git: .git/config and .git/hooks read-only, .git not replaceable
	NixDaemon  bool    // forward the Nix daemon socket with NIX_REMOTE=daemon (--no-nix-daemon clears it)
	NoDesktop  bool    // --no-desktop: no X11, Wayland, D-Bus, audio, keyring or GPU from the host
	Tmux       bool    // --tmux: Claude Code inside tmux, its socket in StateDir so the host can attach
	Record     *Record // this sandbox's registry entry, when it was registered before starting
	// vm only: --accel (auto, kvm, tcg) and --fs for the project share (9p, virtiofs).
	Accel string
	FS    string
	// vm only: --no-display: no QEMU window even where the host has a display.
	NoDisplay bool
}

func (rt *Runtime) euid() int {
	if rt.EUID != nil {
		return rt.EUID()
	}
	return os.Geteuid()
}

func (rt *Runtime) lookupEnv(name string) (string, bool) {
	if rt.LookupEnv != nil {
		return rt.LookupEnv(name)
	}
	return os.LookupEnv(name)
}

// HostIdentity fills Home and User from the calling user. The environment
// is asked first: a user database lookup can go through NSS and be slow.
func (rt *Runtime) HostIdentity() {
	if rt.User == "" {
		rt.User = os.Getenv("USER")
	}
	if rt.Home == "" {
		rt.Home = os.Getenv("HOME")
	}
	if rt.User == "" || rt.Home == "" {
		if u, err := user.LookupId(strconv.Itoa(os.Getuid())); err == nil {
			if rt.User == "" {
				rt.User = u.Username
			}
			if rt.Home == "" {
				rt.Home = u.HomeDir
			}
		}
	}
	if rt.User == "" {
		rt.User = "user"
	}
	if !filepath.IsAbs(rt.Home) || filepath.Clean(rt.Home) == "/" {
		rt.Home = filepath.Join("/home", rt.User)
	}
	rt.Home = filepath.Clean(rt.Home)
}
