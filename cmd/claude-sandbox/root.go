package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/rs/zerolog"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/progress"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// globalOptions are the flags every command shares.
type globalOptions struct {
	With      []string
	NoNetwork bool
	Nixpkgs   string
	Rebuild   bool
	Verbose   int
	LogFormat string
	Backend   string
	Env       []string
	Modules   []string
	Force     bool
	DryRun    bool
	Prebuilt  string      // closures a Nix package realised (prebuilt.go)
	Launch    launchFlags // --new, --tmux, --gh-token, --protect-git, … (enter.go)
	Sudo      bool        // --sudo: run through sudo when not root (the container backend)
	Accel     string      // --accel: the vm backend's accelerator (auto, kvm, tcg)
	FS        string      // --fs: how the vm backend shares the project (9p, virtiofs)
	NoDisplay bool        // --no-display: the vm backend opens no QEMU window
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
		Long: `Run Claude Code (or a shell, or one command) in a bubblewrap sandbox built from
nixpkgs. The project directory is the only host directory it can write.
The first launch of a configuration builds it with Nix; later ones start at once.`,
		Example: `  claude-sandbox ./project
  claude-sandbox --shell ./project
  claude-sandbox --with python3,nodejs ./project -- --model opus
  claude-sandbox exec ./project -- python3 -c 'print(1)'
  claude-sandbox build --with python3`,
		Args:          cobra.ArbitraryArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
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
			// Say so before a build that could take minutes, not after.
			if a.opts.Backend == "container" && os.Geteuid() != 0 && !a.opts.DryRun && (cmd.Parent() == nil || cmd.Name() == "exec") {
				return &launch.NotRootError{Backend: "container"}
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
	f.StringSliceVar(&a.opts.With, "with", nil, "extra nixpkgs packages, comma-separated or repeated (e.g. python3,nodejs)")
	f.BoolVar(&a.opts.NoNetwork, "no-network", false, "no network inside the sandbox")
	f.StringVar(&a.opts.Nixpkgs, "nixpkgs", "", "nixpkgs to build from: a path or a flake reference (default: $CLAUDE_SANDBOX_NIXPKGS, the pinned one, <nixpkgs>)")
	f.BoolVar(&a.opts.Rebuild, "rebuild", false, "ignore the cache: evaluate and build again")
	f.CountVarP(&a.opts.Verbose, "verbose", "v", "more logging (-vv for debug, with every Nix call)")
	f.StringVar(&a.opts.LogFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&a.opts.Backend, "backend", "bubblewrap", "sandbox backend")
	f.StringArrayVar(&a.opts.Env, "env", nil, "pass this host environment variable into the sandbox (repeatable; name only)")
	f.StringArrayVar(&a.opts.Modules, "module", nil, "extra NixOS module file for the container and vm backends (repeatable)")
	f.BoolVar(&a.opts.Force, "force", false, "allow a project directory that is or contains your home directory")
	f.BoolVar(&a.opts.DryRun, "dry-run", false, "print the sandbox invocation as JSON instead of starting it")
	f.StringVar(&a.opts.Accel, "accel", "auto", "vm backend: auto (KVM when /dev/kvm works, else TCG), kvm or tcg (emulation: slow, works everywhere)")
	f.BoolVar(&a.opts.NoDisplay, "no-display", false, "vm backend: no QEMU window even when DISPLAY or WAYLAND_DISPLAY is set")
	f.StringVar(&a.opts.FS, "fs", "9p", "vm backend: how the project reaches the guest: 9p or virtiofs (faster; needs virtiofsd, usually root)")
	f.BoolVar(&a.opts.Sudo, "sudo", false, "when not root, run this command again through sudo (the container backend needs root); only the sandbox's environment allowlist is kept")
	root.Flags().BoolVar(&shell, "shell", false, "start bash instead of Claude Code")
	a.addLaunchFlags(root)
	a.addConfigFlags(root)
	f.StringVar(&a.opts.Prebuilt, "prebuilt", "", "closures built with this package (set by its wrapper scripts)")
	_ = f.MarkHidden("prebuilt")

	root.AddCommand(a.newBuildCmd(), a.newExecCmd(), a.newVersionCmd(), a.newCacheCmd(), a.newGCCmd())
	if man := a.newManCmd(); man != nil {
		root.AddCommand(man)
	}
	root.AddCommand(a.newEnterCmd(), a.newStopCmd(), a.newPsCmd())
	root.AddCommand(a.newDoctorCmd(), a.newTrustCmd(), a.newConfigCmd())
	return root
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
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
