//go:build manpages

package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newManCmd writes the man pages, one per command, from the same command
// tree that --help prints, so they cannot drift from the flags. The Nix
// package builds a second binary with -tags manpages and runs it at build
// time (nix/package.nix): the man page libraries (md2man, blackfriday)
// added ~1.5 ms to every launch when linked into the real binary.
func (a *app) newManCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "gen-man DIR",
		Short:  "Write the man pages (section 1) into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			// The generated pages would otherwise end with a build date,
			// which makes the package unreproducible.
			root.DisableAutoGenTag = true
			// No Title: each page is titled after its own command.
			header := &doc.GenManHeader{
				Section: "1",
				Source:  "claude-sandbox " + version,
				Manual:  "claude-sandbox manual",
			}
			if err := doc.GenManTree(root, header, args[0]); err != nil {
				return fmt.Errorf("writing man pages: %w", err)
			}
			return nil
		},
	}
}
