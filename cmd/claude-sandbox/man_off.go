//go:build !manpages

package main

import "github.com/spf13/cobra"

// newManCmd is absent from the binary users run: see man.go.
func (a *app) newManCmd() *cobra.Command { return nil }
