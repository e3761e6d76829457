package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/backends"
)

func (a *app) newStopCmd() *cobra.Command {
	var all, resetStore bool
	cmd := &cobra.Command{
		Use:   "stop [PROJECT]",
		Short: "End the sandbox running for a project (or every sandbox, with --all)",
		Long: `End the sandboxes running for PROJECT (default: the current directory):
their program is asked to end (SIGHUP, SIGTERM, or a guest power-down), and
after a grace period every process left is killed.

--reset-store also throws away the project's guest Nix store (the vm
backend's: what nix-build and nix profile made inside, kept between runs);
the next VM starts with an empty one.`,
		Example: `  claude-sandbox stop ./project
  claude-sandbox stop --all
  claude-sandbox stop --reset-store ./project`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var running []*launch.Record
			var err error
			project := ""
			switch {
			case all && len(args) > 0:
				return &usageError{msg: "stop takes a project or --all, not both", hint: "claude-sandbox stop PROJECT, or claude-sandbox stop --all"}
			case all && resetStore:
				return &usageError{msg: "--reset-store takes one project, not --all", hint: "claude-sandbox stop --reset-store PROJECT"}
			case all:
				running, err = launch.AllRunning()
			default:
				p := "."
				if len(args) == 1 {
					p = args[0]
				}
				if project, err = launch.ResolveProject(p, true); err != nil {
					return err
				}
				running, err = launch.RunningFor(project)
			}
			if err != nil {
				return err
			}
			if len(running) == 0 {
				if resetStore {
					return a.resetStore(project)
				}
				if all {
					fmt.Fprintln(a.stdout, "no sandbox is running")
					return nil
				}
				return &launch.NotRunningError{Project: project}
			}
			var errs []error
			for _, rec := range running {
				b, err := backends.Get(rec.Backend)
				if err == nil {
					ctx, cancel := context.WithTimeout(cmd.Context(), 60*time.Second)
					err = launch.Stop(ctx, b, rec)
					cancel()
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("%s (%s, pid %d): %w", rec.Project, rec.Backend, rec.PID, err))
					continue
				}
				fmt.Fprintf(a.stdout, "stopped %s (%s, pid %d)\n", rec.Project, rec.Backend, rec.PID)
			}
			if err := errors.Join(errs...); err != nil || !resetStore {
				return err
			}
			return a.resetStore(project)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "stop every running sandbox of this user")
	cmd.Flags().BoolVar(&resetStore, "reset-store", false, "also throw away the project's guest Nix store (vm backend)")
	return cmd
}

func (a *app) resetStore(project string) error {
	size, err := backends.ResetGuestStore(project)
	if err != nil {
		return err
	}
	if size == "" {
		fmt.Fprintf(a.stdout, "%s has no guest Nix store\n", project)
		return nil
	}
	fmt.Fprintf(a.stdout, "removed the guest Nix store of %s (%s)\n", project, size)
	return nil
}
