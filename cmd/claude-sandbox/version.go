package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// version is set at link time (-X main.version=…).
var version = "dev"

func (a *app) newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintf(a.stdout, "claude-sandbox %s\n", version)
			return err
		},
	}
}
