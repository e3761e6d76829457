package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

func (a *app) newLogCmd() *cobra.Command {
	var follow, asJSON, refusedOnly bool
	cmd := &cobra.Command{
		Use:   "log [PROJECT]",
		Short: "Show what the sandboxes of a project were allowed and refused",
		Long: `Show the project's session log: one line per decision of a sandbox's
supervisor (the Nix daemon gateway, the network proxy, the SSH agent, the
credential broker), allowed or refused, with the rule that decided and, for
a refusal, what would allow it. PROJECT defaults to the current directory.`,
		Example: `  claude-sandbox log
  claude-sandbox log ./project --refused
  claude-sandbox log --follow --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := "."
			if len(args) == 1 {
				p = args[0]
			}
			// Reading a log shows nothing a sandbox could not see.
			project, err := launch.ResolveProject(p, true)
			if err != nil {
				return err
			}
			dir, err := launch.ProjectStatePath(project)
			if err != nil {
				return err
			}
			print := func(e sessionlog.Entry) error {
				if refusedOnly && e.Decision != sessionlog.Refuse {
					return nil
				}
				if asJSON {
					return json.NewEncoder(a.stdout).Encode(e)
				}
				_, err := io.WriteString(a.stdout, formatEntry(e)+"\n")
				return err
			}
			path := launch.SessionLog(dir)
			if follow {
				return sessionlog.Follow(cmd.Context(), path, 250*time.Millisecond, print)
			}
			return sessionlog.Read(path, print)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new entries as they come")
	f.BoolVar(&asJSON, "json", false, "print each entry as a JSON object, one per line")
	f.BoolVar(&refusedOnly, "refused", false, "only what was refused")
	return cmd
}

// formatEntry is one entry for a person: when, which sandbox and door, the
// decision and what it was about, then why and what would allow it.
func formatEntry(e sessionlog.Entry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %-9s %-6s", e.Time.Local().Format("2006-01-02 15:04:05"), e.Sandbox, e.Service, e.Decision)
	for _, s := range []string{e.Op, e.Target} {
		if s != "" {
			b.WriteString(" " + s)
		}
	}
	if e.Rule != "" {
		b.WriteString("  [" + e.Rule + "]")
	}
	if e.Reason != "" {
		b.WriteString(": " + e.Reason)
	}
	if e.Fix != "" {
		b.WriteString(" (allow: " + e.Fix + ")")
	}
	return b.String()
}
