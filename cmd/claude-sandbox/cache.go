package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/closure"
)

func (a *app) newCacheCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Inspect the cache of built sandboxes",
	}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List cached sandboxes: key, backend, packages, closure size, last use",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dirs, err := closure.DefaultDirs()
			if err != nil {
				return err
			}
			entries, err := closure.Entries(dirs)
			if err != nil {
				return err
			}
			b := &closure.Builder{Dirs: dirs, Log: a.log}
			type row struct {
				closure.ListedEntry
				ClosureSize uint64 `json:"closureSize"`
			}
			rows := make([]row, 0, len(entries))
			for _, e := range entries {
				size, err := b.ClosureSize(cmd.Context(), e.OutPath)
				if err != nil {
					a.log.Info().Err(err).Str("key", e.Key).Msg("closure size unknown")
				}
				rows = append(rows, row{e, size})
			}
			if asJSON {
				return json.NewEncoder(a.stdout).Encode(rows)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "KEY\tBACKEND\tPACKAGES\tSIZE\tLAST USED\tSTORE PATH")
			for _, r := range rows {
				pkgs := strings.Join(r.Packages, ",")
				if pkgs == "" {
					pkgs = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Key[:12], r.Backend, pkgs, humanBytes(r.ClosureSize),
					r.LastUsed.Format(time.DateTime), r.OutPath)
			}
			return w.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(ls)
	return cmd
}

func (a *app) newGCCmd() *cobra.Command {
	var olderThan string
	var keep int
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Drop cached sandboxes and their GC roots (then nix-collect-garbage frees the space)",
		Example: `  claude-sandbox gc --older-than 30d
  claude-sandbox gc --keep 5`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var age time.Duration
			if olderThan != "" {
				var err error
				if age, err = closure.ParseAge(olderThan); err != nil {
					return &usageError{msg: "--older-than: " + err.Error(), hint: "e.g. --older-than 30d"}
				}
			}
			if olderThan == "" && keep < 0 {
				return &usageError{msg: "gc needs --older-than or --keep", hint: "e.g. claude-sandbox gc --older-than 30d, or --keep 0 to drop everything"}
			}
			dirs, err := closure.DefaultDirs()
			if err != nil {
				return err
			}
			b := &closure.Builder{Dirs: dirs, Log: a.log}
			removed, err := b.Prune(age, keep)
			for _, e := range removed {
				fmt.Fprintf(a.stdout, "removed %s %s %s\n", e.Key[:12], e.Backend, e.OutPath)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%d cached sandbox%s dropped; run nix-collect-garbage (or nix-store --gc) to free their store paths\n",
				len(removed), map[bool]string{true: "", false: "es"}[len(removed) == 1])
			return nil
		},
	}
	cmd.Flags().StringVar(&olderThan, "older-than", "", "drop sandboxes not used for this long (e.g. 30d, 12h)")
	cmd.Flags().IntVar(&keep, "keep", -1, "keep only the N most recently used")
	return cmd
}

func humanBytes(n uint64) string {
	switch {
	case n == 0:
		return "-"
	case n < 1<<20:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
}
