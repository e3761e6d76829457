package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
)

func (a *app) newBuildCmd() *cobra.Command {
	var asJSON, printExpr bool
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build (or find in the cache) the sandbox closure and print its store path",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, req, err := a.builderAndRequest(cmd.Context())
			if err != nil {
				return err
			}
			if printExpr {
				path, gen, err := b.Expr(req)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "# %s\n%s", path, gen.Expr)
				return nil
			}
			c, err := b.Ensure(cmd.Context(), req)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(a.stdout).Encode(c)
			}
			fmt.Fprintln(a.stdout, c.OutPath)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print {key, outPath, drvPath, cached} as JSON")
	cmd.Flags().BoolVar(&printExpr, "print-expr", false, "print the generated Nix expression instead of building it")
	return cmd
}
