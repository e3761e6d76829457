package main

import (
	"context"
	"encoding/json"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/backends"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
	"github.com/claude-sandbox/claude-sandbox/progress"
)

// builderAndRequest turns the global flags into a closure request. It runs
// no Nix unless the nixpkgs choice is a flake reference never resolved before.
func (a *app) builderAndRequest(ctx context.Context) (*closure.Builder, closure.Request, error) {
	return a.builderAndRequestFor(ctx, a.opts.Backend, a.networkOn())
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

func nixSystem() string { return launch.NixSystem() }

type launchMode struct {
	shell      bool
	claudeArgs []string
	command    []string
}

// launch checks, builds (or finds) the closure, and starts the sandbox or
// joins the running one; with --dry-run it prints the invocation instead.
func (a *app) launch(ctx context.Context, projectArg string, mode launchMode) error {
	project, err := launch.ResolveProject(projectArg, a.opts.Force)
	if err != nil {
		return err
	}
	backend, err := backends.Get(a.opts.Backend)
	if err != nil {
		return err
	}
	rt, err := a.runtimeFor(project, mode)
	if err != nil {
		return err
	}
	netMode, err := a.networkMode(a.flagChanged)
	if err != nil {
		return err
	}
	if rt.Egress, err = a.egress(netMode); err != nil {
		return err
	}
	rt.Network = rt.Egress != nil
	if cl := a.opts.Launch.ClaudeLogin; cl != launch.ClaudeLoginPlaceholder && cl != launch.ClaudeLoginReal {
		return &launch.ClaudeLoginError{Value: cl}
	}
	if rt.Secrets, err = a.secretBindings(rt.GHToken); err != nil {
		return err
	}
	if len(a.opts.SSHKeys) > 0 {
		rt.SSHKeys = a.opts.SSHKeys
	}
	dirs, err := closure.DefaultDirs()
	if err != nil {
		return err
	}
	l := &launch.Launch{
		Backend:  backend,
		Runtime:  rt,
		New:      a.opts.Launch.New,
		DryRun:   a.opts.DryRun,
		CacheDir: dirs.Cache,
		Say:      a.say,
		Warn:     a.warn,
		Log:      a.log,
	}
	// Before a build that could take minutes, not after.
	if err := l.Check(); err != nil {
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
	l.Manifest, l.Closure = c.Manifest, c.OutPath
	if a.opts.DryRun {
		p, err := l.Plan()
		if err != nil {
			return err
		}
		defer p.Invocation.Close()
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		// The invocation, and what it keeps from being changed.
		return enc.Encode(struct {
			*launch.Invocation
			Protected []launch.Protected `json:"protected"`
		}{p.Invocation.Printable(), p.Protected})
	}
	a.log.Debug().Str("key", c.Key).Str("out", c.OutPath).Bool("cached", c.Cached).Msg("launching")
	a.sayNetwork(rt)
	err = l.Run(ctx)
	if rt.Egress != nil && rt.Egress.Mode == launch.NetLearn {
		if lerr := a.reportLearned(project, l.Learned); lerr != nil && err == nil {
			err = lerr
		}
	}
	return err
}

// closeProgress ends a live build display before anything else (an error,
// the sandbox itself) writes to the terminal.
func (a *app) closeProgress() {
	if a.progress != nil {
		a.progress.Close()
		a.progress = nil
	}
}
