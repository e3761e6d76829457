package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/backends"
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
					e.Status = b.Status(cmd.Context(), r)
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
			fmt.Fprintln(w, "ID\tPROJECT\tBACKEND\tPID\tSTARTED\tCLOSURE")
			for _, e := range entries {
				backend := e.Backend
				if e.Status != "" {
					backend += " (" + e.Status + ")"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Project, backend, e.PID,
					e.Started.Local().Format("2006-01-02 15:04:05"), e.Closure)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}
