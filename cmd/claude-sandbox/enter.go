package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/launch"
)

// launchFlags are the switches of a sandbox start that are not about what
// is built.
type launchFlags struct {
	New         bool
	Tmux        bool
	GHToken     bool
	ProtectGit  bool
	NoNixDaemon bool
	NoDesktop   bool
}

func (a *app) addLaunchFlags(root *cobra.Command) {
	f := root.PersistentFlags()
	l := &a.opts.Launch
	f.BoolVar(&l.New, "new", false, "start a separate sandbox even if one runs for the project (default: join it)")
	f.BoolVar(&l.GHToken, "gh-token", false, "pass GH_TOKEN and GITHUB_TOKEN into the sandbox")
	f.BoolVar(&l.ProtectGit, "protect-git", true, "keep the project's .git/config and .git/hooks read-only (--protect-git=false to allow writing them)")
	f.BoolVar(&l.NoNixDaemon, "no-nix-daemon", false, "do not forward the Nix daemon socket (no Nix builds inside)")
	f.BoolVar(&l.NoDesktop, "no-desktop", false, "forward no display, audio, D-Bus, keyring or GPU from the host")
	root.Flags().BoolVar(&l.Tmux, "tmux", false, "run Claude Code inside tmux; the host can attach to its socket in the project state directory")
}

// runtimeFor builds the run-time half of a launch from the flags.
func (a *app) runtimeFor(project string, mode launchMode) *launch.Runtime {
	l := a.opts.Launch
	rt := &launch.Runtime{
		Project:    project,
		Shell:      mode.shell,
		Network:    !a.opts.NoNetwork,
		ExtraEnv:   a.opts.Env,
		GHToken:    l.GHToken,
		ProtectGit: l.ProtectGit,
		NixDaemon:  !l.NoNixDaemon,
		NoDesktop:  l.NoDesktop,
		Tmux:       l.Tmux && len(mode.command) == 0,
	}
	rt.HostIdentity()
	return rt
}

// sandboxCommand decides the program a launch runs: the command of `exec`,
// a login shell, or Claude Code told where it runs; with --tmux, inside tmux.
func sandboxCommand(c *closure.Closure, rt *launch.Runtime, mode launchMode) []string {
	var cmd []string
	switch {
	case len(mode.command) > 0:
		return mode.command
	case mode.shell:
		cmd = []string{c.Manifest.Shell, "-l"}
	default:
		cmd = append([]string{c.Manifest.Claude, "--append-system-prompt", launch.Notice(c.Manifest.Backend, rt)}, mode.claudeArgs...)
	}
	// The tmux socket's directory is the bubblewrap sandbox's; another
	// backend sees rt.Tmux and arranges its own.
	if rt.Tmux && c.Manifest.Backend == "bubblewrap" {
		return launch.TmuxCommand(cmd)
	}
	return cmd
}

// startOrJoin joins the sandbox already running for the project with the
// same configuration (unless --new), or registers this one and starts it.
func (a *app) startOrJoin(ctx context.Context, c *closure.Closure, rt *launch.Runtime) error {
	rec := &launch.Record{
		Project: rt.Project,
		Backend: c.Manifest.Backend,
		Closure: c.OutPath,
		Config:  launch.ConfigOf(c.Manifest.Backend, c.OutPath, rt),
	}
	forceNew := a.opts.Launch.New
	var others []*launch.Record
	for {
		var join *launch.Record
		var err error
		join, others, err = launch.Claim(ctx, rt.StateDir, rec, forceNew)
		if err != nil {
			return err
		}
		if join == nil {
			break
		}
		a.say("joining the sandbox already running for %s (pid %d); --new starts a separate one", rt.Project, join.PID)
		err = launch.Enter(ctx, join, rt)
		// A sandbox that ended between the look and the join (it ran a
		// short command): start one after all.
		if !launch.EndedBeforeJoin(err) {
			return err
		}
		forceNew = true
	}
	if len(others) > 0 && !forceNew {
		a.say("a sandbox with other settings runs for %s; starting a separate one (`claude-sandbox enter` joins the running one)", rt.Project)
	}
	if rt.Tmux && c.Manifest.Backend == "bubblewrap" {
		a.say("tmux: attach from the host with  tmux -S %s attach", launch.TmuxSocket(rt.StateDir))
	}
	rt.Record = rec
	a.log.Debug().Str("id", rec.ID).Str("config", rec.Config).Msg("registered")
	err := launch.Start(ctx, c.Manifest, rt)
	// Reached when the backend supervises (vm) or could not start at all.
	launch.Unregister(rt.StateDir, rec.ID)
	return err
}

// say prints a notice for a person: on a terminal, else at -v.
func (a *app) say(format string, args ...any) {
	if isTerminal(a.stderr) && a.opts.LogFormat != "json" {
		fmt.Fprintf(a.stderr, "claude-sandbox: "+format+"\n", args...)
		return
	}
	a.log.Info().Msg(fmt.Sprintf(format, args...))
}

// runningFor lists the live sandboxes of a project without creating its
// state directory.
func runningFor(project string) ([]*launch.Record, error) {
	root, err := launch.StateRoot()
	if err != nil {
		return nil, err
	}
	return launch.Running(filepath.Join(root, "projects", launch.ProjectStateName(project)))
}

func (a *app) newEnterCmd() *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "enter [PROJECT] [-- COMMAND [ARGS...]]",
		Short: "Open a shell (or run a command) inside the sandbox running for a project",
		Long: `Open a login shell, or run COMMAND, inside the sandbox already running for
PROJECT (default: the current directory), with that sandbox's environment,
starting in the project directory. Works for every backend.`,
		Example: `  claude-sandbox enter
  claude-sandbox enter ./project -- git status`,
		RunE: func(cmd *cobra.Command, args []string) error {
			projectArg, command, err := splitAtDash(cmd, args, 1)
			if err != nil {
				return err
			}
			p := "."
			if len(projectArg) == 1 {
				p = projectArg[0]
			}
			// A running sandbox was already allowed to see this directory.
			project, err := launch.ResolveProject(p, true)
			if err != nil {
				return err
			}
			running, err := runningFor(project)
			if err != nil {
				return err
			}
			var rec *launch.Record
			for _, r := range running {
				if id == "" || r.ID == id {
					rec = r
					break
				}
			}
			if rec == nil {
				return &launch.NotRunningError{Project: project}
			}
			if len(running) > 1 && id == "" {
				a.say("%d sandboxes run for %s; entering the oldest (%s; see claude-sandbox ps, --id)", len(running), project, rec.ID)
			}
			rt := &launch.Runtime{Project: project, Shell: len(command) == 0, Command: command}
			rt.HostIdentity()
			return launch.Enter(cmd.Context(), rec, rt)
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "the sandbox to enter when several run for the project (from claude-sandbox ps)")
	return cmd
}
