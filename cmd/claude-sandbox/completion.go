package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
)

// Shell completion: cobra generates the bash, zsh and fish scripts
// (`claude-sandbox completion bash`); they call the hidden `__complete`
// command, which lands in the functions below.

// namesFirstTimeout bounds the one evaluation of nixpkgs that lists its
// package names; every later completion reads the cached list.
const namesFirstTimeout = 20 * time.Second

// namesBackoff is how long a failure to list names is remembered.
const namesBackoff = 10 * time.Minute

func (a *app) registerCompletions(root *cobra.Command) {
	fixed := func(choices ...string) cobra.CompletionFunc {
		return func(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			var out []cobra.Completion
			for _, c := range choices {
				if strings.HasPrefix(c, toComplete) {
					out = append(out, c)
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		}
	}
	flags := map[string]cobra.CompletionFunc{
		"with":       a.completeWith,
		"backend":    fixed(nixgen.Backends...),
		"log-format": fixed("text", "json"),
		"accel":      fixed(launch.AccelAuto, launch.AccelKVM, launch.AccelTCG),
		"fs":         fixed(launch.FS9p, launch.FSVirtiofs),
		"env":        completeEnvNames,
		"nixpkgs": func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
			return nil, cobra.ShellCompDirectiveFilterDirs
		},
		"module": func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
			return []cobra.Completion{"nix"}, cobra.ShellCompDirectiveFilterFileExt
		},
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for name, fn := range flags {
			// A flag's completion is registered once, on the command that
			// defines it; subcommands inherit persistent ones.
			if c.LocalFlags().Lookup(name) != nil || c.PersistentFlags().Lookup(name) != nil {
				_ = c.RegisterFlagCompletionFunc(name, fn)
			}
		}
		switch {
		case c.ValidArgsFunction != nil:
		case !c.HasParent(), c.Name() == "exec", c.Name() == "trust", c.Name() == "config":
			c.ValidArgsFunction = completeProjectDir
		case c.Name() == "enter", c.Name() == "stop":
			c.ValidArgsFunction = completeRunning
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// completeProjectDir completes the PROJECT argument: directories, beside
// the command's subcommand names.
func completeProjectDir(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveDefault // the command or Claude's arguments
	}
	if strings.ContainsAny(toComplete, "/~") || strings.HasPrefix(toComplete, ".") {
		return nil, cobra.ShellCompDirectiveFilterDirs
	}
	for _, sub := range cmd.Commands() {
		if sub.IsAvailableCommand() && strings.HasPrefix(sub.Name(), toComplete) {
			return nil, cobra.ShellCompDirectiveNoFileComp // cobra lists the subcommands
		}
	}
	entries, _ := os.ReadDir(".")
	var out []cobra.Completion
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), toComplete) && isDirEntry(e) && (toComplete != "" || !strings.HasPrefix(e.Name(), ".")) {
			out = append(out, e.Name()+"/")
		}
	}
	return out, cobra.ShellCompDirectiveNoSpace | cobra.ShellCompDirectiveNoFileComp
}

func isDirEntry(e os.DirEntry) bool {
	if e.IsDir() {
		return true
	}
	if e.Type()&os.ModeSymlink != 0 {
		st, err := os.Stat(e.Name())
		return err == nil && st.IsDir()
	}
	return false
}

// completeRunning completes the projects that have a running sandbox.
func completeRunning(_ *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	running, _ := launch.AllRunning()
	cwd, _ := os.Getwd()
	seen := map[string]bool{}
	var out []cobra.Completion
	for _, r := range running {
		shown := r.Project
		if rel, err := filepath.Rel(cwd, r.Project); err == nil && !strings.HasPrefix(rel, "..") {
			shown = rel
		}
		if seen[shown] || !strings.HasPrefix(shown, toComplete) {
			continue
		}
		seen[shown] = true
		out = append(out, cobra.CompletionWithDesc(shown, fmt.Sprintf("%s, pid %d, since %s", r.Backend, r.PID, r.Started.Local().Format("15:04"))))
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func completeEnvNames(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	var out []cobra.Completion
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name != "" && strings.HasPrefix(name, toComplete) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeWith completes --with from the attribute names of the nixpkgs
// this command line would build from (flags, configuration, environment).
// `--with python3,nu` completes the part after the last comma, and
// `python3Packages.nu` the names inside python3Packages.
func (a *app) completeWith(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	none := cobra.ShellCompDirectiveNoFileComp
	done, current := "", toComplete
	if i := strings.LastIndexByte(toComplete, ','); i >= 0 {
		done, current = toComplete[:i+1], toComplete[i+1:]
	}
	var set []string
	leaf := current
	if i := strings.LastIndexByte(current, '.'); i >= 0 {
		parts, err := nixgen.ParseAttrPath(current[:i])
		if err != nil {
			return nil, none
		}
		set, leaf = parts, current[i+1:]
	}
	// The nixpkgs a launch would use: a trusted project's or the user's
	// setting counts, an untrusted project's is not evaluated.
	if err := a.applyConfig(cmd, args, true); err != nil {
		a.log.Debug().Err(err).Msg("completion: configuration left out")
	}
	dirs, err := closure.DefaultDirs()
	if err != nil {
		return nil, none
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, namesFirstTimeout)
	defer cancel()
	b := &closure.Builder{Dirs: dirs, Log: a.log}
	choice := closure.ChooseNixpkgs(a.opts.Nixpkgs, a.getenv)
	// Where nixpkgs cannot be resolved or listed (offline, no Nix), say
	// nothing for a while instead of paying for the same failure on every TAB.
	sum := sha256.Sum256([]byte(choice.Ref + "\x00" + strings.Join(set, ".")))
	backoff := filepath.Join(dirs.Cache, "names", "unavailable-"+hex.EncodeToString(sum[:8]))
	if st, err := os.Stat(backoff); err == nil && time.Since(st.ModTime()) < namesBackoff {
		return nil, none
	}
	np, err := b.ResolveNixpkgs(ctx, choice, false)
	var names []string
	if err == nil {
		names, err = b.PackageNames(ctx, np, nixSystem(), set)
	}
	if err != nil {
		if !errors.Is(err, context.DeadlineExceeded) { // too slow this time: try again next time
			_ = os.MkdirAll(filepath.Dir(backoff), 0o755)
			_ = os.WriteFile(backoff, []byte(err.Error()+"\n"), 0o644)
		}
		a.log.Debug().Err(err).Msg("completion: no package names")
		return nil, none
	}
	prefix := done
	if len(set) > 0 {
		prefix += strings.Join(set, ".") + "."
	}
	out := make([]cobra.Completion, 0, 64)
	for _, n := range names {
		if strings.HasPrefix(n, leaf) {
			out = append(out, prefix+n)
		}
	}
	return out, none
}
