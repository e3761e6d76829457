package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/config"
	"github.com/claude-sandbox/claude-sandbox/launch"
)

func (a *app) newTrustCmd() *cobra.Command {
	var show, revoke, list, asJSON bool
	cmd := &cobra.Command{
		Use:   "trust [PROJECT]",
		Short: "Approve a project's configuration file, or review it (--show)",
		Long: `A project's claude-sandbox.toml comes from its repository, which you may not
control. Settings that only add packages or narrow access apply at once;
settings that widen access (env, gh-token, modules, nixpkgs, network,
nix-daemon or desktop on where your settings turn them off, protect = false,
unprotect, protect-git = false, sudo) apply only after you approve the file exactly as it is, with this
command. The approval is recorded by content hash (with the content of any
module file it names): any later change needs approval again.

--show prints the file, what it widens and whether it is trusted, and
approves nothing. --revoke withdraws approvals of the file. --list shows
every approval.`,
		Example: `  claude-sandbox trust --show ./project
  claude-sandbox trust ./project
  claude-sandbox trust --revoke ./project`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			store, err := trustStore()
			if err != nil {
				return err
			}
			if list {
				return a.printApprovals(store, asJSON)
			}
			p := "."
			if len(args) == 1 {
				p = args[0]
			}
			dir, err := launch.ResolveProject(p, true)
			if err != nil {
				return err
			}
			project, err := config.LoadProject(dir)
			if err != nil {
				return err
			}
			if project == nil {
				return &usageError{
					msg:  fmt.Sprintf("%s has no %s or %s", dir, config.ProjectFileNames[0], config.ProjectFileNames[1]),
					hint: "there is nothing to trust; `claude-sandbox config` shows which files a launch reads",
				}
			}
			user, err := config.LoadUser(a.getenv)
			if err != nil {
				return err
			}
			st := store.Check(project, user, flagDefaults(cmd))
			switch {
			case revoke:
				n, err := store.Revoke(project.Path)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "withdrew %d approval(s) of %s\n", n, project.Path)
				return nil
			case show:
				return a.printTrustShow(st, dir, asJSON)
			}
			approval, err := store.Approve(project)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "trusted %s as it is now (sha256 %s)\n", project.Path, approval.FileSHA256)
			if len(st.Widenings) == 0 {
				fmt.Fprintln(a.stdout, "it widens nothing, so it applied without approval too")
			}
			for _, w := range st.Widenings {
				fmt.Fprintf(a.stdout, "  now allowed: %s\n", visible(w.String()))
			}
			for _, m := range approval.Modules {
				fmt.Fprintf(a.stdout, "  module file: %s (sha256 %s)\n", visible(m.Path), m.SHA256)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&show, "show", false, "print the file, what it widens and whether it is trusted; approve nothing")
	f.BoolVar(&revoke, "revoke", false, "withdraw every approval of the project's file")
	f.BoolVar(&list, "list", false, "list every approval")
	f.BoolVar(&asJSON, "json", false, "with --show or --list: print JSON")
	cmd.MarkFlagsMutuallyExclusive("show", "revoke", "list")
	return cmd
}

// visible makes hostile text safe to review on a terminal: control
// characters (an escape sequence could hide a line) and bidirectional
// overrides (which reorder what is shown, "Trojan Source") are printed as
// escapes instead of acting.
func visible(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\t':
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			fmt.Fprintf(&b, `\x%02x`, r)
		case unicode.Is(unicode.Bidi_Control, r) || r == '\u200b' || r == '\ufeff' || r == unicode.ReplacementChar:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// printNumbered prints text with line numbers, made visible.
func printNumbered(w io.Writer, text string) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i, line := range lines {
		fmt.Fprintf(w, "  %4d  %s\n", i+1, visible(strings.TrimSuffix(line, "\r")))
	}
}

func (a *app) printTrustShow(st config.Status, dir string, asJSON bool) error {
	digest, modules := config.Digest(st.File)
	if asJSON {
		type widening struct {
			Key   string `json:"key"`
			Line  int    `json:"line"`
			Value string `json:"value"`
			Why   string `json:"why"`
		}
		ws := []widening{}
		for _, w := range st.Widenings {
			ws = append(ws, widening{w.Setting.Key.Name, w.Setting.Line, w.Setting.Value(), w.Why})
		}
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			File      string                `json:"file"`
			Digest    string                `json:"digest"`
			Trusted   bool                  `json:"trusted"`
			Effective bool                  `json:"effective"`
			Status    string                `json:"status"`
			Widenings []widening            `json:"widenings"`
			Modules   []config.ModuleDigest `json:"modules,omitempty"`
			Content   string                `json:"content"`
		}{st.File.Path, digest, st.Approval != nil, st.Effective(), st.Describe(), ws, modules, string(st.File.Content)})
	}
	w := a.stdout
	fmt.Fprintf(w, "%s: %s\n\n", visible(st.File.Path), st.Describe())
	printNumbered(w, string(st.File.Content))
	fmt.Fprintln(w)
	if len(st.Widenings) == 0 {
		fmt.Fprintln(w, "It widens nothing: it applies without approval.")
		return nil
	}
	fmt.Fprintln(w, "It widens the sandbox's access (each needs your approval):")
	for _, wd := range st.Widenings {
		fmt.Fprintf(w, "  %s\n", visible(wd.String()))
	}
	for _, m := range modules {
		fmt.Fprintf(w, "\nModule file %s (part of what you approve):\n", visible(m.Path))
		data, err := os.ReadFile(m.Path)
		if err != nil {
			fmt.Fprintf(w, "  (cannot be read: %v)\n", err)
			continue
		}
		printNumbered(w, string(data))
	}
	if st.Approval == nil {
		fmt.Fprintf(w, "\nTo approve exactly this content: claude-sandbox trust %s\n", visible(dir))
	}
	return nil
}

func (a *app) printApprovals(store config.TrustStore, asJSON bool) error {
	all, err := store.List()
	if err != nil {
		return err
	}
	if asJSON {
		if all == nil {
			all = []config.Approval{}
		}
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	if len(all) == 0 {
		fmt.Fprintln(a.stdout, "no approvals")
		return nil
	}
	for _, ap := range all {
		current := "changed since"
		if f, err := config.Load(ap.Path); err == nil && f != nil {
			if d, _ := config.Digest(f); d == ap.Digest {
				current = "current"
			}
		} else if f == nil && err == nil {
			current = "file gone"
		}
		fmt.Fprintf(a.stdout, "%s  %s  (%s)\n", ap.Approved.Local().Format("2006-01-02 15:04"), visible(ap.Path), current)
	}
	return nil
}
