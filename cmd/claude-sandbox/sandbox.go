package main

import (
	"context"
	"encoding/json"
	"os"
	"runtime"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
	"github.com/claude-sandbox/claude-sandbox/progress"
)

// builderAndRequest turns the global flags into a closure request. It runs
// no Nix unless the nixpkgs choice is a flake reference never resolved before.
func (a *app) builderAndRequest(ctx context.Context) (*closure.Builder, closure.Request, error) {
	return a.builderAndRequestFor(ctx, a.opts.Backend, !a.opts.NoNetwork)
}

// builderAndRequestFor is builderAndRequest for another backend or network
// setting than the flags say (build --all).
func (a *app) builderAndRequestFor(ctx context.Context, backend string, network bool) (*closure.Builder, closure.Request, error) {
	dirs, err := closure.DefaultDirs()
	if err != nil {
		return nil, closure.Request{}, err
	}
	b := &closure.Builder{Dirs: dirs, Log: a.log}
	if a.opts.Verbose > 0 {
		b.Progress = a.stderr
	}
	mode := progress.Plain
	switch {
	case a.opts.LogFormat == "json":
		mode = progress.JSON
	case isTerminal(a.stderr):
		mode = progress.Terminal
	}
	if mode != progress.JSON {
		b.Notice = a.stderr
	}
	a.closeProgress()
	a.progress = progress.New(a.stderr, mode, a.opts.Verbose > 0)
	b.Events = a.progress.Handle
	modules, err := nixgen.LoadModules(a.opts.Modules)
	if err != nil {
		return nil, closure.Request{}, err
	}
	canon, err := nixgen.Canonicalize(nixgen.Options{
		Backend:  backend,
		Packages: a.opts.With,
		Modules:  modules,
		Network:  network,
	})
	if err != nil {
		return nil, closure.Request{}, err
	}
	choice := closure.ChooseNixpkgs(a.opts.Nixpkgs, a.getenv)
	a.log.Debug().Str("ref", choice.Ref).Str("from", choice.Source).Msg("nixpkgs")
	np, err := b.ResolveNixpkgs(ctx, choice, a.opts.Rebuild)
	if err != nil {
		return nil, closure.Request{}, err
	}
	return b, closure.Request{Options: canon, Nixpkgs: np, System: nixSystem(), Rebuild: a.opts.Rebuild}, nil
}

func nixSystem() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return arch + "-" + runtime.GOOS
}

type launchMode struct {
	shell      bool
	claudeArgs []string
	command    []string
}

// launch ensures the closure and replaces this process with the sandbox.
func (a *app) launch(ctx context.Context, projectArg string, mode launchMode) error {
	project, err := launch.ResolveProject(projectArg, a.opts.Force)
	if err != nil {
		return err
	}
	b, req, err := a.builderAndRequest(ctx)
	if err != nil {
		return err
	}
	c, err := a.ensureClosure(ctx, b, req)
	if err != nil {
		return err
	}
	rt := a.runtimeFor(project, mode)
	rt.Accel, rt.FS, rt.NoDisplay = a.opts.Accel, a.opts.FS, a.opts.NoDisplay // the vm backend's
	rt.Command = sandboxCommand(c, rt, mode)
	if c.Manifest.Backend == "bubblewrap" && !a.opts.DryRun {
		// Before anything is written: where bwrap cannot run, say why first.
		if err := launch.CheckUserNamespaces(os.Geteuid()); err != nil {
			return err
		}
	}
	if rt.StateDir, err = launch.ProjectStateDir(project); err != nil {
		return err
	}
	if a.opts.DryRun {
		inv, err := launch.Plan(c.Manifest, rt)
		if err != nil {
			return err
		}
		defer inv.Close()
		return a.printInvocation(inv.Portable())
	}
	a.log.Debug().Str("key", c.Key).Str("out", c.OutPath).Bool("cached", c.Cached).Msg("launching")
	return a.startOrJoin(ctx, c, rt)
}

// shownEnv are the variables whose values --dry-run may print; the rest
// (API keys, --env opt-ins) show as <redacted>.
var shownEnv = map[string]bool{
	"PATH": true, "HOME": true, "USER": true, "LOGNAME": true, "SHELL": true, "TERM": true, "COLORTERM": true,
	"LANG": true, "LANGUAGE": true, "LC_ALL": true, "TZ": true, "NIX_LD": true, "NIX_LD_LIBRARY_PATH": true,
	"CLAUDE_SANDBOX": true, "CLAUDE_SANDBOX_BACKEND": true, "NIX_REMOTE": true, "XDG_RUNTIME_DIR": true,
	"DISPLAY": true, "WAYLAND_DISPLAY": true, "XAUTHORITY": true, "DBUS_SESSION_BUS_ADDRESS": true,
	"PULSE_SERVER": true, "PIPEWIRE_REMOTE": true, "SSH_AUTH_SOCK": true,
}

func (a *app) printInvocation(inv *launch.Invocation) error {
	shown := *inv
	shown.Env = nil
	for _, kv := range inv.Env {
		name, _, _ := strings.Cut(kv, "=")
		if !shownEnv[name] {
			kv = name + "=<redacted>"
		}
		shown.Env = append(shown.Env, kv)
	}
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(shown)
}

// closeProgress ends a live build display before anything else (an error,
// the sandbox itself) writes to the terminal.
func (a *app) closeProgress() {
	if a.progress != nil {
		a.progress.Close()
		a.progress = nil
	}
}
