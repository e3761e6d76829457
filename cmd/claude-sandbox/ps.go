package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/backends"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// psEntry is one line of `ps --json`: a stable, documented shape rather
// than the registry's internal record.
type psEntry struct {
	ID      string    `json:"id"`
	Project string    `json:"project"`
	Backend string    `json:"backend"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	Closure string    `json:"closure"`
	Status  string    `json:"status,omitempty"` // what the backend says of its state (a VM's run state and accelerator)
	// Sessions is how many sessions run in it (its supervisor counts them).
	Sessions int `json:"sessions,omitempty"`
	// Doors are the decisions of its supervisor's services ("nix", "net",
	// "ssh-agent", …): allowed and refused so far.
	Doors map[string]control.Counts `json:"doors,omitempty"`
}

func (a *app) newPsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List the running sandboxes of this user",
		Example: `  claude-sandbox ps
  claude-sandbox ps --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			running, err := launch.AllRunning()
			if err != nil {
				return err
			}
			entries := make([]psEntry, 0, len(running))
			for _, r := range running {
				e := psEntry{ID: r.ID, Project: r.Project, Backend: r.Backend, PID: r.PID, Started: r.Started, Closure: r.Closure}
				if b, err := backends.Get(r.Backend); err == nil {
					var st *control.Status
					e.Status, st = launch.Status(cmd.Context(), b, r)
					if st != nil {
						e.Sessions, e.Doors = st.Sessions, st.Services
					}
				}
				entries = append(entries, e)
			}
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(entries)
			}
			if len(entries) == 0 {
				fmt.Fprintln(a.stdout, "no sandbox is running")
				return nil
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tPROJECT\tBACKEND\tPID\tSESSIONS\tREFUSED\tSTARTED\tCLOSURE")
			for _, e := range entries {
				backend := e.Backend
				if e.Status != "" {
					backend += " (" + e.Status + ")"
				}
				refused := 0
				for _, c := range e.Doors {
					refused += c.Refused
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", e.ID, e.Project, backend, e.PID, e.Sessions, refused,
					e.Started.Local().Format("2006-01-02 15:04:05"), e.Closure)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}
