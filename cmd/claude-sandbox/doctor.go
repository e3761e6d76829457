package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/doctor"
)

// DoctorError: the default backend cannot run here; the report says why.
type DoctorError struct{ Backend string }

func (e *DoctorError) Error() string {
	return fmt.Sprintf("the default backend (%s) cannot run on this machine", e.Backend)
}
func (e *DoctorError) Hint() string { return "each ✗ line above says what to fix" }

func (a *app) newDoctorCmd() *cobra.Command {
	var asJSON bool
	var kvmTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this machine can build and run each backend",
		Long: `Check Nix and its daemon, the nixpkgs a build would use, user namespaces
(by starting a tiny bwrap sandbox), systemd-nspawn and root, KVM (by booting
a guest kernel for a few seconds), virtiofsd, the display, audio, D-Bus and
SSH agent sockets a sandbox would get, the cache directory, GC roots and
free disk, and what a sandbox keeps from being changed. Each line is ✓ (works), ✗ (broken, with the fix), ! (works
partly, or could not be tried) or – (absent, and nothing needs it).

Exits 1 when the default backend (--backend, else the configuration's) cannot
run.`,
		Example: `  claude-sandbox doctor
  claude-sandbox doctor --json | jq '.checks[] | select(.status == "fail")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dirs, err := closure.DefaultDirs()
			if err != nil {
				return err
			}
			unprotect, err := a.unprotect()
			if err != nil {
				return err
			}
			env := &doctor.Env{
				Getenv:         a.getenv,
				EUID:           os.Geteuid(),
				Dirs:           dirs,
				Nixpkgs:        closure.ChooseNixpkgs(a.opts.Nixpkgs, a.getenv),
				DefaultBackend: a.opts.Backend,
				System:         nixSystem(),
				NoDesktop:      a.opts.Launch.NoDesktop,
				NoNetwork:      a.opts.NoNetwork,
				Protect:        a.opts.Launch.Protect,
				Unprotect:      unprotect,

				NixUnsandboxedBuilds: a.opts.Launch.NixUnsandboxedBuilds,
				KVMTimeout:           kvmTimeout,
				Log:                  a.log,
			}
			gh := a.opts.Launch.GHToken
			if st := a.cfg.state; st != nil && !gh {
				if s, ok := st.user.Get("gh-token"); ok {
					gh = s.Bool
				}
			}
			if env.Secrets, err = a.secretBindings(gh); err != nil {
				return err
			}
			report := doctor.Run(cmd.Context(), env)
			if asJSON {
				err = report.WriteJSON(a.stdout)
			} else {
				err = report.WriteText(a.stdout)
			}
			if err != nil {
				return err
			}
			if !report.OK {
				return &DoctorError{Backend: report.DefaultBackend}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	cmd.Flags().DurationVar(&kvmTimeout, "kvm-timeout", 10*time.Second, "how long a guest may stay silent under KVM before it counts as stuck")
	cmd.Flags().AddFlag(a.buildFlags().Lookup("nixpkgs"))
	cmd.Flags().AddFlag(a.noDesktopFlag())
	cmd.Flags().AddFlagSet(a.protectFlags())
	return cmd
}
