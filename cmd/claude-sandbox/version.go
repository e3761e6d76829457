package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/templates"
)

// version is set at link time (-X main.version=…).
var version = "dev"

func (a *app) newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if asJSON {
				// What a packager checks: which nixpkgs the build pinned and
				// which template bundle sandboxes are built from.
				return json.NewEncoder(a.stdout).Encode(struct {
					Version   string `json:"version"`
					Nixpkgs   string `json:"compiledNixpkgs"`
					System    string `json:"system"`
					Templates string `json:"templates"`
				}{version, closure.CompiledNixpkgs, nixSystem(), templates.Digest()})
			}
			_, err := fmt.Fprintf(a.stdout, "claude-sandbox %s\n", version)
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the version, the compiled-in nixpkgs, the system and the template digest as JSON")
	return cmd
}
