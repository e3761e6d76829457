package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/config"
	"github.com/claude-sandbox/claude-sandbox/launch"
)

// configFlag is the flag a setting stands for; invert for the negated
// switches (network = false is --no-network).
type configFlag struct {
	name   string
	invert bool
}

var configFlags = map[string]configFlag{
	"backend":                {name: "backend"},
	"with":                   {name: "with"},
	"network":                {name: "network"},
	"allow":                  {name: "allow"},
	"deny":                   {name: "deny"},
	"nix-daemon":             {name: "no-nix-daemon", invert: true},
	"nix-unsandboxed-builds": {name: "nix-unsandboxed-builds"},
	"desktop":                {name: "no-desktop", invert: true},
	"protect":                {name: "protect"},
	"unprotect":              {name: "unprotect"},
	"protect-git":            {name: "protect-git"},
	"tmux":                   {name: "tmux"},
	"accel":                  {name: "accel"},
	"fs":                     {name: "fs"},
	"env":                    {name: "env"},
	"gh-token":               {name: "gh-token"},
	"modules":                {name: "module"},
	"nixpkgs":                {name: "nixpkgs"},
	"sudo":                   {name: "sudo"},
	"ssh-keys":               {name: "ssh-key"},
	"claude-login":           {name: "claude-login"},
}

// configOptions is the app's share of configuration: the --no-config
// switch and what applyConfig found.
type configOptions struct {
	noConfig bool
	state    *configState
}

func (a *app) addConfigFlags(root *cobra.Command) {
	root.PersistentFlags().BoolVar(&a.cfg.noConfig, "no-config", false, "read no configuration file (neither yours nor the project's)")
}

// configState is what applyConfig found and did.
type configState struct {
	user, project *config.File
	projectDir    string
	status        config.Status
	// projectIgnored: a lenient caller (completion, `config`) went on
	// without an untrusted project file.
	projectIgnored bool
	applied        []appliedSetting
	args           []string // the applied settings as flags
}

// configArgs are flags that carry the applied settings to a re-run of this
// command (--sudo): the re-run has root's home, so it would read root's
// files and root's trust store instead of the user's.
func (a *app) configArgs() []string {
	if a.cfg.state == nil || a.cfg.noConfig {
		return nil
	}
	return append([]string{"--no-config"}, a.cfg.state.args...)
}

type appliedSetting struct {
	Key   string   `json:"key"`
	Value string   `json:"value"`
	From  []string `json:"from"`
	Note  string   `json:"note,omitempty"` // why it did not take effect
}

// configScope says which files a command reads. Only commands that build or
// start a sandbox take settings; a broken file must not break `help`,
// `version`, `ps` or `trust` (which is how a user repairs it).
func configScope(cmd *cobra.Command) (user, project bool) {
	switch {
	case !cmd.HasParent(), cmd.Name() == "exec", cmd.Name() == "config":
		return true, true
	case cmd.Name() == "build", cmd.Name() == "doctor":
		return true, false
	}
	return false, false
}

// projectArg is the PROJECT a launching command names ("." by default for
// the root command); "" when it names none yet.
func projectArg(cmd *cobra.Command, args []string) string {
	before := args
	if dash := cmd.ArgsLenAtDash(); dash >= 0 && dash <= len(args) {
		before = args[:dash]
	}
	if len(before) > 0 {
		return before[0]
	}
	if !cmd.HasParent() || cmd.Name() == "config" {
		return "."
	}
	return ""
}

func trustStore() (config.TrustStore, error) {
	dirs, err := closure.DefaultDirs()
	if err != nil {
		return config.TrustStore{}, err
	}
	return config.TrustStore{Dir: filepath.Join(dirs.State, "trust")}, nil
}

// lookupFlag finds a flag on the command, or on the root (whose local
// flags, like --tmux, still have the default a setting is compared with).
func lookupFlag(cmd *cobra.Command, name string) *pflag.Flag {
	if f := cmd.Flags().Lookup(name); f != nil {
		return f
	}
	if f := cmd.Root().PersistentFlags().Lookup(name); f != nil {
		return f
	}
	return cmd.Root().Flags().Lookup(name)
}

// flagDefaults are the built-in values the user's own settings start from.
func flagDefaults(cmd *cobra.Command) config.Defaults {
	return func(key string) (bool, bool) {
		m, ok := configFlags[key]
		if !ok {
			return false, false
		}
		f := lookupFlag(cmd, m.name)
		if f == nil {
			return false, false
		}
		v, err := strconv.ParseBool(f.DefValue)
		if err != nil {
			return false, false
		}
		return v != m.invert, true
	}
}

// applyConfig loads the user's and the project's files and gives their
// settings to the flags the user did not set: flags > project > user >
// built-in defaults, except lists (with, env, modules), which add up. A
// project file that widens access takes effect only once the user trusted
// it as it is now; otherwise the command fails (lenient: goes on without
// it).
func (a *app) applyConfig(cmd *cobra.Command, args []string, lenient bool) error {
	wantUser, wantProject := configScope(cmd)
	if cmd.Name() == "config" {
		lenient = true // it shows an untrusted file's status instead of failing
	}
	st := &configState{}
	a.cfg.state = st
	if !wantUser || a.cfg.noConfig {
		return nil
	}
	user, err := config.LoadUser(a.getenv)
	if err != nil {
		return err
	}
	st.user = user
	files := []*config.File{user}
	if p := projectArg(cmd, args); wantProject && p != "" {
		// Only where the project is: the launch reports a bad directory.
		if dir, err := launch.ResolveProject(p, true); err == nil {
			st.projectDir = dir
			project, err := config.LoadProject(dir)
			if err != nil {
				if lenient {
					a.log.Debug().Err(err).Msg("project configuration unusable")
					project = nil
				} else {
					return err
				}
			}
			st.project = project
			if project != nil {
				store, err := trustStore()
				if err != nil {
					return err
				}
				st.status = store.Check(project, user, flagDefaults(cmd))
				switch {
				case st.status.Effective():
					files = append(files, project)
				case lenient:
					st.projectIgnored = true
				default:
					return &config.UntrustedError{Status: st.status, Project: dir}
				}
			}
		}
	}
	return a.applySettings(cmd, files)
}

func fileLabel(f *config.File, user *config.File) string {
	if f == user {
		return "user config"
	}
	return "project config"
}

func (a *app) applySettings(cmd *cobra.Command, files []*config.File) error {
	st := a.cfg.state
	for _, k := range config.Keys {
		m := configFlags[k.Name]
		fl := cmd.Flags().Lookup(m.name)
		if fl == nil && cmd.Name() == "config" {
			fl = lookupFlag(cmd, m.name) // show the launch's own switches (--tmux) too
		}
		if fl == nil {
			continue // not a flag of this command (or of this build)
		}
		if k.Kind == config.List {
			var vals, from []string
			for _, f := range files {
				if s, ok := f.Get(k.Name); ok && len(s.List) > 0 {
					vals = append(vals, s.List...)
					from = append(from, fileLabel(f, st.user))
				}
			}
			sv, ok := fl.Value.(pflag.SliceValue)
			if len(vals) == 0 || !ok {
				continue
			}
			if err := sv.Replace(append(vals, sv.GetSlice()...)); err != nil {
				return err
			}
			st.applied = append(st.applied, appliedSetting{Key: k.Name, Value: config.Setting{Key: k, List: vals}.Value(), From: from})
			for _, v := range vals {
				st.args = append(st.args, "--"+m.name+"="+v)
			}
			continue
		}
		if fl.Changed {
			continue
		}
		var (
			s     config.Setting
			src   *config.File
			found bool
		)
		for _, f := range files {
			if v, ok := f.Get(k.Name); ok {
				s, src, found = v, f, true
			}
		}
		if !found {
			continue
		}
		if k.Name == "nixpkgs" && a.getenv("CLAUDE_SANDBOX_NIXPKGS") != "" {
			// The environment is the more specific choice (one shell, one
			// CI job), as it is over the compiled-in nixpkgs.
			st.applied = append(st.applied, appliedSetting{k.Name, s.Value(), []string{fileLabel(src, st.user)}, "not used: CLAUDE_SANDBOX_NIXPKGS is set"})
			continue
		}
		value := s.Str
		if k.Kind == config.Bool {
			value = strconv.FormatBool(s.Bool != m.invert)
		}
		if err := fl.Value.Set(value); err != nil {
			return &config.FileError{Path: src.Path, Line: s.Line, Msg: k.Name + ": " + err.Error()}
		}
		st.applied = append(st.applied, appliedSetting{Key: k.Name, Value: s.Value(), From: []string{fileLabel(src, st.user)}})
		st.args = append(st.args, "--"+m.name+"="+value)
	}
	for _, ap := range st.applied {
		a.log.Info().Str("setting", ap.Key).Str("value", ap.Value).Strs("from", ap.From).Str("note", ap.Note).Msg("configuration")
	}
	return nil
}

func (a *app) newConfigCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "config [PROJECT]",
		Short: "Show the configuration files a launch of PROJECT reads, and what they set",
		Long: `Show the user's and the project's configuration files, whether the project's
is trusted, and every setting they give a launch of PROJECT (default: the
current directory). A flag given on this command line wins over the files,
as it would for a launch (the setting is then not listed). See the README,
"Configuration and trust".`,
		Example: `  claude-sandbox config
  claude-sandbox config --json ./project`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// PersistentPreRunE applied the configuration already.
			return a.printConfig(asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	cmd.Flags().AddFlagSet(a.launchFlags())
	return cmd
}

func (a *app) printConfig(asJSON bool) error {
	st := a.cfg.state
	store, _ := trustStore()
	path := func(f *config.File, fallback string) string {
		if f != nil {
			return f.Path
		}
		return fallback
	}
	userPath := path(st.user, config.UserPath(a.getenv)+" (none)")
	projectPath := "(none)"
	if st.projectDir != "" {
		projectPath = path(st.project, "(none in "+st.projectDir+")")
	}
	trust := st.status.Describe()
	if st.projectIgnored {
		trust += "; left out of this launch"
	}
	if asJSON {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			UserFile    string           `json:"userFile"`
			ProjectFile string           `json:"projectFile"`
			ProjectDir  string           `json:"projectDir,omitempty"`
			Trust       string           `json:"trust"`
			Effective   bool             `json:"projectEffective"`
			TrustStore  string           `json:"trustStore"`
			Settings    []appliedSetting `json:"settings"`
		}{userPath, projectPath, st.projectDir, trust, st.project != nil && st.status.Effective(), store.Dir, st.applied})
	}
	w := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "user file:\t%s\n", userPath)
	fmt.Fprintf(w, "project file:\t%s\n", projectPath)
	if st.project != nil {
		fmt.Fprintf(w, "trust:\t%s\n", trust)
	}
	fmt.Fprintf(w, "trust store:\t%s\n", store.Dir)
	w.Flush()
	if len(st.applied) == 0 {
		fmt.Fprintln(a.stdout, "\nno settings from files: built-in defaults and flags only")
		return nil
	}
	fmt.Fprintln(a.stdout)
	w = tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SETTING\tVALUE\tFROM")
	for _, ap := range st.applied {
		from := strings.Join(ap.From, ", ")
		if ap.Note != "" {
			from += " (" + ap.Note + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", ap.Key, visible(ap.Value), from)
	}
	return w.Flush()
}
