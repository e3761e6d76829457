package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/rs/zerolog"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/claude-sandbox/claude-sandbox/internal/tty"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/backends"
	"github.com/claude-sandbox/claude-sandbox/progress"
)

// globalOptions are what the flags set. Each command accepts only the
// flags it uses (defined with it); the persistent ones are those every
// command must accept: the entry commands (claude-sandbox-vm, the Nix
// wrappers) put --backend, --no-network and --prebuilt before whatever
// subcommand the user names.
type globalOptions struct {
	// Persistent.
	Backend   string
	NoNetwork bool
	Prebuilt  string // closures a Nix package realised (prebuilt.go)
	Sudo      bool   // --sudo: run again through sudo when not root
	Verbose   int
	LogFormat string

	// What is built (launching commands, build).
	With    []string
	Nixpkgs string
	Rebuild bool
	Modules []string

	// How it runs (launching commands).
	Env       []string
	Force     bool
	DryRun    bool
	Launch    launchFlags // --new, --tmux, --gh-token, --protect, --unprotect, … (enter.go)
	Accel     string      // --accel: a virtual machine's accelerator (auto, kvm, tcg)
	FS        string      // --fs: how a virtual machine gets the project (9p, virtiofs)
	NoDisplay bool        // --no-display: no QEMU window
	// The network (launching commands): --network MODE (--no-network is
	// MODE none), and the proxy's --allow and --deny rules.
	Network      string
	Allow, Deny  []string
	WriteLearned bool
	// SSHKeys are the agent's keys the sandbox may use (--ssh-key; nil: all).
	SSHKeys []string // --write-learned: add what learn mode recorded to claude-sandbox.toml
}

// app carries what commands need from the outside world, so tests can
// replace it.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	opts           globalOptions
	log            zerolog.Logger
	progress       *progress.Renderer // the live build display, while a build runs
	cfg            configOptions      // configuration files and trust (config.go)
	cmd            *cobra.Command     // the command running
}

// flagChanged says whether the user gave a flag of the running command.
func (a *app) flagChanged(name string) bool {
	if a.cmd == nil {
		return false
	}
	f := lookupFlag(a.cmd, name)
	return f != nil && f.Changed
}

func run(args []string) int {
	a := &app{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	ctx := newInterruptContext(context.Background())
	defer ctx.Stop()
	root := a.newRootCmd()
	if len(args) > 0 && (args[0] == cobra.ShellCompRequestCmd || args[0] == cobra.ShellCompNoDescRequestCmd) {
		// Only the shell's completion requests read them, and walking every
		// command's flags costs each launch a third of a millisecond.
		a.registerCompletions(root)
	}
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var status *launch.ExitStatusError
	if err != nil && !errors.As(err, &status) { // a sandboxed command's own failure is not ours to report
		if a.opts.LogFormat == "json" {
			a.log.Error().Err(err).Int("exit", exitCode(err)).Msg("failed")
		} else {
			printError(a.stderr, err)
		}
	}
	return exitCode(err)
}

func (a *app) newRootCmd() *cobra.Command {
	var shell bool
	root := &cobra.Command{
		Use:   "claude-sandbox [flags] [PROJECT] [-- CLAUDE-ARGS...]",
		Short: "Run Claude Code in a sandbox whose userland comes from nixpkgs",
		Long: `Run Claude Code (or a shell, or one command) in a sandbox built from nixpkgs.
The project directory is the only host directory it can write. The first
launch of a configuration builds it with Nix; later ones start at once.`,
		Example: `  claude-sandbox ./project
  claude-sandbox --shell ./project
  claude-sandbox --with python3,nodejs ./project -- --model opus
  claude-sandbox exec ./project -- python3 -c 'print(1)'
  claude-sandbox build --with python3`,
		Args:          cobra.ArbitraryArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			a.cmd = cmd
			if err := a.setupLogging(); err != nil {
				return err
			}
			// Flags the user did not set take the configuration's values.
			if err := a.applyConfig(cmd, args, false); err != nil {
				return err
			}
			if a.opts.Sudo && os.Geteuid() != 0 {
				return launch.SudoReexec(append(a.configArgs(), entryArgs(os.Args)...), a.opts.Env)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			project, rest, err := splitAtDash(cmd, args, 1)
			if err != nil {
				return err
			}
			p := "."
			if len(project) == 1 {
				p = project[0]
			}
			if shell && len(rest) > 0 {
				return &usageError{msg: "--shell takes no arguments after --", hint: "use `claude-sandbox exec PROJECT -- CMD` to run one command"}
			}
			return a.launch(cmd.Context(), p, launchMode{shell: shell, claudeArgs: rest})
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &usageError{msg: err.Error(), hint: "see claude-sandbox --help"}
	})
	f := root.PersistentFlags()
	f.StringVar(&a.opts.Backend, "backend", backends.Default, "sandbox backend: bubblewrap (default, unprivileged), container (systemd-nspawn, root) or vm (QEMU)")
	f.BoolVar(&a.opts.NoNetwork, "no-network", false, "no network inside the sandbox (--network none)")
	f.BoolVar(&a.opts.Sudo, "sudo", false, "when not root, run this command again through sudo (the container backend needs root); only the sandbox's environment allowlist is kept")
	f.CountVarP(&a.opts.Verbose, "verbose", "v", "more logging (-vv for debug, with every Nix call)")
	f.StringVar(&a.opts.LogFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&a.opts.Prebuilt, "prebuilt", "", "closures built with this package (set by its wrapper scripts)")
	_ = f.MarkHidden("prebuilt")
	a.addConfigFlags(root)

	root.Flags().AddFlagSet(a.launchFlags())
	root.Flags().BoolVar(&shell, "shell", false, "start bash instead of Claude Code")
	root.Flags().BoolVar(&a.opts.Launch.Tmux, "tmux", false, "run Claude Code inside tmux; the host can attach to its socket in the project state directory")

	root.AddCommand(a.newBuildCmd(), a.newExecCmd(), a.newVersionCmd(), a.newCacheCmd(), a.newGCCmd())
	if man := a.newManCmd(); man != nil {
		root.AddCommand(man)
	}
	root.AddCommand(a.newEnterCmd(), a.newStopCmd(), a.newPsCmd(), a.newLogCmd())
	root.AddCommand(a.newDoctorCmd(), a.newTrustCmd(), a.newConfigCmd())
	return root
}

// buildFlags are the flags that choose what is built.
func (a *app) buildFlags() *pflag.FlagSet {
	f := pflag.NewFlagSet("build", pflag.ContinueOnError)
	f.StringSliceVar(&a.opts.With, "with", nil, "extra nixpkgs packages, comma-separated or repeated (e.g. python3,nodejs)")
	f.StringVar(&a.opts.Nixpkgs, "nixpkgs", "", "nixpkgs to build from: a path or a flake reference (default: $CLAUDE_SANDBOX_NIXPKGS, the pinned one, <nixpkgs>)")
	f.BoolVar(&a.opts.Rebuild, "rebuild", false, "ignore the cache: evaluate and build again")
	f.StringArrayVar(&a.opts.Modules, "module", nil, "extra NixOS module file for the container and vm backends (repeatable)")
	return f
}

// launchFlags are the flags of a command that starts a sandbox (the root
// command, exec) and of `config`, which shows what such a launch reads:
// what is built, and how it runs.
func (a *app) launchFlags() *pflag.FlagSet {
	f := a.buildFlags()
	f.StringArrayVar(&a.opts.Env, "env", nil, "pass this host environment variable into the sandbox (repeatable; name only)")
	f.BoolVar(&a.opts.Force, "force", false, "allow a project directory that is or contains your home directory")
	f.BoolVar(&a.opts.DryRun, "dry-run", false, "print the sandbox invocation as JSON instead of starting it")
	f.StringVar(&a.opts.Accel, "accel", "auto", "vm backend: auto (KVM when /dev/kvm works, else TCG), kvm or tcg (emulation: slow, works everywhere)")
	f.BoolVar(&a.opts.NoDisplay, "no-display", false, "vm backend: no QEMU window even when DISPLAY or WAYLAND_DISPLAY is set")
	f.StringVar(&a.opts.FS, "fs", "9p", "vm backend: how the project reaches the guest: 9p or virtiofs (faster; needs virtiofsd, usually root)")
	f.StringVar(&a.opts.Network, "network", launch.NetAllowlist, "the sandbox's network, always through its proxy: allowlist (the allow rules and what Claude Code needs), open (every public destination), learn (open, and print the rules it used at the end), none")
	f.StringArrayVar(&a.opts.Allow, "allow", nil, "let the network proxy reach this destination: host (*.example.com for names below), host:port, host METHODS, an address or network with :port (repeatable)")
	f.StringArrayVar(&a.opts.Deny, "deny", nil, "refuse this destination whatever allows it (repeatable; the syntax of --allow)")
	f.BoolVar(&a.opts.WriteLearned, "write-learned", false, "with --network learn: add the rules it learned to the project's claude-sandbox.toml (which then needs `claude-sandbox trust`)")
	l := &a.opts.Launch
	f.BoolVar(&l.New, "new", false, "start a separate sandbox even if one runs for the project (default: join it)")
	f.BoolVar(&l.GHToken, "gh-token", false, "give the sandbox GH_TOKEN and GITHUB_TOKEN as placeholders the proxy fills in for GitHub's hosts")
	f.StringArrayVar(&a.opts.SSHKeys, "ssh-key", nil, "let the sandbox use this key of your SSH agent: its SHA256 fingerprint (ssh-add -l) or a glob over its comment (repeatable; default: every key)")
	f.StringVar(&l.ClaudeLogin, "claude-login", launch.ClaudeLoginPlaceholder, "Claude Code's login (~/.claude/.credentials.json) inside: placeholder (a copy holding placeholders the proxy fills in) or real (the host's file as it is)")
	f.AddFlagSet(a.protectFlags())
	f.BoolVar(&l.NoNixDaemon, "no-nix-daemon", false, "no Nix daemon inside (no Nix builds or store additions from the sandbox)")
	f.BoolVar(&l.NixUnsandboxedBuilds, "nix-unsandboxed-builds", false, "let the sandbox build through the host's Nix daemon although that daemon does not sandbox its builds (they run on the host as its build users)")
	f.AddFlag(a.noDesktopFlag())
	return f
}

// protectFlags are --protect, --unprotect and --protect-git, shared by the
// launching commands and doctor (which reports what they protect).
func (a *app) protectFlags() *pflag.FlagSet {
	l := &a.opts.Launch
	f := pflag.NewFlagSet("protect", pflag.ContinueOnError)
	f.BoolVar(&l.Protect, "protect", true, "keep what the host runs by itself read-only inside: Claude Code's configuration in ~/.claude, the project's .claude/, .mcp.json, .envrc, .vscode/, .idea/, .git/config and .git/hooks (--protect=false for none)")
	f.StringArrayVar(&l.Unprotect, "unprotect", nil, "leave this protected path writable: relative to the project (.vscode, .git, .claude/worktrees) or in ~/.claude (~/.claude/settings.json) (repeatable)")
	f.BoolVar(&l.ProtectGit, "protect-git", true, "keep the project's .git/config and .git/hooks read-only; --protect-git=false is --unprotect .git")
	return f
}

// unprotect is what the flags leave writable, checked (--protect-git=false
// is --unprotect .git).
func (a *app) unprotect() ([]string, error) {
	l := a.opts.Launch
	u := l.Unprotect
	if !l.ProtectGit {
		u = append(append([]string(nil), u...), ".git")
	}
	return launch.CleanUnprotect(u)
}

// noDesktopFlag is --no-desktop, shared by the launching commands and
// doctor (which reports what a launch would forward).
func (a *app) noDesktopFlag() *pflag.Flag {
	f := pflag.NewFlagSet("desktop", pflag.ContinueOnError)
	f.BoolVar(&a.opts.Launch.NoDesktop, "no-desktop", false, "forward no display, audio, D-Bus, keyring or GPU from the host")
	return f.Lookup("no-desktop")
}

func (a *app) setupLogging() error {
	level := zerolog.WarnLevel
	switch {
	case a.opts.Verbose == 1:
		level = zerolog.InfoLevel
	case a.opts.Verbose >= 2:
		level = zerolog.DebugLevel
	}
	switch a.opts.LogFormat {
	case "json":
		a.log = zerolog.New(a.stderr).Level(level).With().Timestamp().Logger()
	case "text":
		w := zerolog.ConsoleWriter{Out: a.stderr, NoColor: !isTerminal(a.stderr)}
		a.log = zerolog.New(w).Level(level).With().Timestamp().Logger()
	default:
		return &usageError{msg: fmt.Sprintf("--log-format %q: unknown", a.opts.LogFormat), hint: "use text or json"}
	}
	return nil
}

// splitAtDash separates the positional arguments before `--` (at most
// maxBefore) from those after it.
func splitAtDash(cmd *cobra.Command, args []string, maxBefore int) (before, after []string, err error) {
	before = args
	if dash := cmd.ArgsLenAtDash(); dash >= 0 {
		before, after = args[:dash], args[dash:]
	}
	if len(before) > maxBefore {
		return nil, nil, &usageError{
			msg:  fmt.Sprintf("unexpected argument %q", before[maxBefore]),
			hint: "put the command or Claude's arguments after --",
		}
	}
	return before, after, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && tty.IsTerminal(int(f.Fd()))
}
