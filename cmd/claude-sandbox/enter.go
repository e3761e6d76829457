package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/backends"
)

// launchFlags are the switches of a sandbox start that are not about what
// is built.
type launchFlags struct {
	New         bool
	Tmux        bool
	GHToken     bool
	Protect     bool     // --protect (default): what the host runs by itself stays read-only
	Unprotect   []string // --unprotect PATH: a protected path left writable
	ProtectGit  bool     // --protect-git=false is --unprotect .git
	ClaudeLogin string   // --claude-login (placeholder or real)
	NoNixDaemon bool
	NoDesktop   bool
	// NixUnsandboxedBuilds: let builds through the Nix gateway although
	// the host daemon runs them outside any sandbox.
	NixUnsandboxedBuilds bool
}

// runtimeFor builds the run-time half of a launch from the flags.
func (a *app) runtimeFor(project string, mode launchMode) (*launch.Runtime, error) {
	l := a.opts.Launch
	unprotect, err := a.unprotect()
	if err != nil {
		return nil, err
	}
	rt := &launch.Runtime{
		Project:    project,
		Command:    mode.command,
		Shell:      mode.shell,
		ClaudeArgs: mode.claudeArgs,
		Tmux:       l.Tmux && len(mode.command) == 0,
		Network:    a.networkOn(),
		ExtraEnv:   a.opts.Env,
		GHToken:    l.GHToken,
		Protect:    l.Protect,
		Unprotect:  unprotect,
		NixDaemon:  !l.NoNixDaemon,
		NoDesktop:  l.NoDesktop,
		Accel:      a.opts.Accel,
		FS:         a.opts.FS,
		NoDisplay:  a.opts.NoDisplay,

		RealClaudeLogin: l.ClaudeLogin == launch.ClaudeLoginReal,

		NixUnsandboxedBuilds: l.NixUnsandboxedBuilds,
	}
	rt.HostIdentity()
	return rt, nil
}

// say prints a notice for a person: on a terminal, else at -v.
func (a *app) say(format string, args ...any) {
	if isTerminal(a.stderr) && a.opts.LogFormat != "json" {
		fmt.Fprintf(a.stderr, "claude-sandbox: "+format+"\n", args...)
		return
	}
	a.log.Info().Msg(fmt.Sprintf(format, args...))
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
			running, err := launch.RunningFor(project)
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
			b, err := backends.Get(rec.Backend)
			if err != nil {
				return err
			}
			rt := &launch.Runtime{Project: project, Shell: len(command) == 0, Command: command}
			rt.HostIdentity()
			return launch.Enter(cmd.Context(), b, rec, rt)
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "the sandbox to enter when several run for the project (from claude-sandbox ps)")
	return cmd
}
