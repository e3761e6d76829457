package main

import (
	"github.com/spf13/cobra"
)

func (a *app) newExecCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "exec PROJECT -- COMMAND [ARGS...]",
		Short: "Run one command in the sandbox; its exit status is claude-sandbox's",
		Example: `  claude-sandbox exec ./project -- python3 -c 'print(1)'
  claude-sandbox exec --no-network . -- curl https://example.com`,
		RunE: func(cmd *cobra.Command, args []string) error {
			project, command, err := splitAtDash(cmd, args, 1)
			if err != nil {
				return err
			}
			if len(project) == 0 || len(command) == 0 {
				return &usageError{msg: "exec needs a project and a command", hint: "claude-sandbox exec PROJECT -- COMMAND [ARGS...]"}
			}
			return a.launch(cmd.Context(), project[0], launchMode{command: command})
		},
	}
	cmd.Flags().AddFlagSet(a.launchFlags())
	return cmd
}
