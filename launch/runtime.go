package launch

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/claude-sandbox/claude-sandbox/secrets"
)

// Runtime holds this run's choices: nothing here changes the closure.
type Runtime struct {
	Project string // resolved by ResolveProject

	// What runs inside (Command decides from these, once): Command when
	// given (exec, enter), else a login shell (Shell), else Claude Code
	// with ClaudeArgs; inside tmux with Tmux.
	Command    []string
	Shell      bool
	ClaudeArgs []string
	Tmux       bool // --tmux: the tmux socket in the project state directory, so the host can attach

	// Network: the sandbox reaches the network, through its proxy, by
	// Egress (nil: none; Network is then false).
	Network  bool
	Egress   *Egress
	ExtraEnv []string // --env NAMEs
	Home     string   // $HOME inside (the host's path, on an empty tmpfs)
	User     string
	// LookupEnv reads the host environment (os.LookupEnv when nil).
	LookupEnv func(string) (string, bool)
	// EUID is the effective uid to check privileges against (os.Geteuid when nil).
	EUID func() int

	// StateDir is the project's state directory: persistent ~/.local, /tmp,
	// browser profile, tmux socket. The launch sets it (ProjectStatePath);
	// empty leaves the sandbox without persistent state.
	StateDir string
	GHToken  bool // --gh-token: bind GH_TOKEN and GITHUB_TOKEN to GitHub's hosts
	// Secrets are the secret bindings in effect (built-ins and [secrets]):
	// resolved on the host at the start, placeholders inside.
	Secrets []secrets.Binding
	// SSHKeys are the host agent's keys the sandbox may use (SHA256
	// fingerprints or comment globs, as sshagent.ParseKeys reads them;
	// nil: all of them).
	SSHKeys []string
	// RealClaudeLogin (--claude-login real): Claude Code's credentials
	// file is visible inside as it is on the host, instead of a copy
	// holding placeholders.
	RealClaudeLogin bool
	// Protect: what the host runs or obeys by itself — Claude Code's
	// configuration in ~/.claude, the project's auto-run files and git's
	// configuration and hooks — cannot be changed from inside (protect.go).
	// --protect=false (protect = false) turns it off.
	Protect bool
	// Unprotect are protected paths left writable (--unprotect, unprotect
	// = [...]; --protect-git=false is ".git"), as CleanUnprotect made them.
	Unprotect []string
	NixDaemon bool // Nix inside through the Nix daemon gateway, NIX_REMOTE=daemon (--no-nix-daemon clears it)
	// NixUnsandboxedBuilds: the gateway lets builds through although the
	// host daemon runs them outside any sandbox (--nix-unsandboxed-builds).
	NixUnsandboxedBuilds bool
	NoDesktop            bool // --no-desktop: no X11, Wayland, D-Bus, audio, keyring or GPU from the host

	// For a backend that runs a virtual machine: --accel, --fs, --no-display.
	Accel     string // AccelAuto, AccelKVM, AccelTCG
	FS        string // FS9p, FSVirtiofs
	NoDisplay bool   // no window for the guest even where the host has a display

	// secretVars are the variables secrets fill: never passed from the host.
	secretVars []string
}

// Accelerators (--accel).
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// How the project reaches a virtual machine (--fs).
const (
	FS9p       = "9p"
	FSVirtiofs = "virtiofs"
)

// EffectiveUID is the uid privileges are checked against.
func (rt *Runtime) EffectiveUID() int {
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

// Getenv reads a host variable the way the launch does (LookupEnv).
func (rt *Runtime) Getenv(name string) (string, bool) { return rt.lookupEnv(name) }

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
