package closure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
	"github.com/claude-sandbox/claude-sandbox/internal/filelock"
	"github.com/claude-sandbox/claude-sandbox/manifest"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
	"github.com/claude-sandbox/claude-sandbox/templates"
)

// Builder realises and caches sandbox closures.
type Builder struct {
	Dirs Dirs
	Log  zerolog.Logger
	// Progress receives Nix's own output during a build (nil: silent).
	Progress io.Writer
	// Notice receives one line when a build starts (nil: silent).
	Notice io.Writer
	// Events receives progress events during a build (nil: none).
	Events func(Event)
}

func (b *Builder) emit(ev Event) {
	if b.Events != nil {
		b.Events(ev)
	}
}

// Request names a closure.
type Request struct {
	Options nixgen.Canonical
	Nixpkgs nixgen.Nixpkgs
	System  string
	Rebuild bool // ignore the cache, evaluate and realise again
}

// Closure is a realised, rooted sandbox closure.
type Closure struct {
	Key      string             `json:"key"`
	OutPath  string             `json:"outPath"`
	DrvPath  string             `json:"drvPath"`
	Cached   bool               `json:"cached"`
	Manifest *manifest.Manifest `json:"-"`
}

func (b *Builder) runner() nixRunner { return nixRunner{log: b.Log, progress: b.Progress} }

func (b *Builder) nixgenRequest(req Request, templatesDir string) nixgen.Request {
	return nixgen.Request{
		Options:      req.Options,
		Nixpkgs:      req.Nixpkgs,
		System:       req.System,
		TemplatesDir: templatesDir,
		TemplatesID:  templates.Digest(),
	}
}

// Key is the cache key of a request. It needs no file and no process.
func (b *Builder) Key(req Request) string { return nixgen.Key(b.nixgenRequest(req, "")) }

// Expr materialises the templates and writes the entry expression for req,
// returning its path and text: what `build --print-expr` shows, and what a
// person can hand to nix-build.
func (b *Builder) Expr(req Request) (path string, gen nixgen.Generated, err error) {
	dir, err := templates.Materialise(b.Dirs.Templates())
	if err != nil {
		return "", nixgen.Generated{}, err
	}
	gen, err = nixgen.Generate(b.nixgenRequest(req, dir))
	if err != nil {
		return "", nixgen.Generated{}, err
	}
	path = b.Dirs.exprFile(gen.Key)
	if current, err := os.ReadFile(path); err != nil || string(current) != gen.Expr {
		if err := atomicfile.Write(path, []byte(gen.Expr), 0o644); err != nil {
			return "", nixgen.Generated{}, fmt.Errorf("writing the entry expression: %w", err)
		}
	}
	return path, gen, nil
}

// Lookup returns the cached closure for req, or nil on a miss. It runs no
// process: this is the whole cost of a warm launch before exec.
func (b *Builder) Lookup(req Request) *Closure {
	key := b.Key(req)
	e, err := readEntry(b.Dirs, key)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			b.Log.Info().Err(err).Str("key", key).Msg("cache entry unusable, rebuilding")
		}
		return nil
	}
	m, err := manifest.Load(e.OutPath)
	if err != nil {
		b.Log.Info().Err(err).Str("key", key).Msg("cached manifest unusable, rebuilding")
		return nil
	}
	touch(b.Dirs, key)
	return &Closure{Key: key, OutPath: e.OutPath, DrvPath: e.DrvPath, Cached: true, Manifest: m}
}

// Ensure returns the closure for req, building it on a miss. Concurrent calls
// for one key build once: the others wait on the key's lock and then find
// the entry the first one wrote.
func (b *Builder) Ensure(ctx context.Context, req Request) (*Closure, error) {
	if !req.Rebuild {
		if c := b.Lookup(req); c != nil {
			return c, nil
		}
	}
	key := b.Key(req)
	// Builds take minutes: a waiter checking ten times a second is plenty.
	unlock, err := filelock.Acquire(ctx, b.Dirs.lockFile(key), 100*time.Millisecond)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if !req.Rebuild {
		if c := b.Lookup(req); c != nil {
			return c, nil
		}
	}
	return b.build(ctx, req)
}

func (b *Builder) build(ctx context.Context, req Request) (*Closure, error) {
	exprPath, gen, err := b.Expr(req)
	if err != nil {
		return nil, err
	}
	if err := b.CheckNixVersion(ctx, req.Nixpkgs); err != nil {
		return nil, err
	}
	if b.Notice != nil {
		fmt.Fprintf(b.Notice, "claude-sandbox: building the %s sandbox (once per configuration; later launches start at once)\n", req.Options.Backend)
	}
	start := time.Now()
	run := b.runner()

	b.emit(Event{Kind: EventEvaluating})
	inst, err := run.run(ctx, "nix-instantiate", exprPath)
	if err != nil {
		return nil, b.evaluationError(ctx, req, exprPath, inst.tail, err)
	}
	drvPath := lastLine(inst.stdout)
	if !strings.HasSuffix(drvPath, ".drv") || !strings.HasPrefix(drvPath, manifest.StoreDir+"/") {
		return nil, &BuildError{Stage: "evaluation", Message: fmt.Sprintf("nix-instantiate printed %q, not a derivation", drvPath), Expr: exprPath}
	}

	root := b.Dirs.gcroot(gen.Key)
	if err := os.MkdirAll(b.Dirs.gcroots(), 0o755); err != nil {
		return nil, fmt.Errorf("creating GC root directory: %w", err)
	}
	// An indirect root: the symlink lives in our state dir and Nix follows it
	// from gcroots/auto, so removing the symlink is all `gc` needs to do.
	outPath, err := b.realise(ctx, drvPath, root)
	if err != nil {
		var be *BuildError
		if errors.As(err, &be) {
			be.Stage, be.Expr = "build", exprPath
		}
		return nil, err
	}
	m, err := manifest.Load(outPath)
	if err != nil {
		return nil, &BuildError{Stage: "build", Message: err.Error(), Expr: exprPath}
	}
	entry := &Entry{
		Schema:   entrySchema,
		Key:      gen.Key,
		OutPath:  outPath,
		DrvPath:  drvPath,
		Backend:  req.Options.Backend,
		Packages: req.Options.PackageNames(),
		Nixpkgs:  req.Nixpkgs.Identity,
		Created:  time.Now().UTC(),
	}
	if err := writeEntry(b.Dirs, entry); err != nil {
		return nil, fmt.Errorf("recording the cache entry: %w", err)
	}
	b.Log.Info().Str("key", gen.Key).Str("out", outPath).Dur("took", time.Since(start)).Msg("built")
	return &Closure{Key: gen.Key, OutPath: outPath, DrvPath: drvPath, Manifest: m}, nil
}

const (
	unknownMarker     = "claude-sandbox:unknown-packages:"
	notPackagesMarker = "claude-sandbox:not-packages:"
	// nixos/modules/misc/nixpkgs.nix's assertion for nixpkgs.config beside
	// nixpkgs.pkgs, which eval-config sets from its `pkgs` argument.
	nixosExternalInstance = "Your system configures nixpkgs with an externally created instance"
)

// evaluationError recognises the templates' own failures and explains them.
func (b *Builder) evaluationError(ctx context.Context, req Request, exprPath string, tail []string, err error) error {
	var be *BuildError
	if !errors.As(err, &be) {
		return err
	}
	for _, marker := range []string{unknownMarker, notPackagesMarker} {
		paths, ok := markerPayload(tail, marker)
		if !ok {
			continue
		}
		names := make([]string, len(paths))
		for i, p := range paths {
			names[i] = strings.Join(p, ".")
		}
		upe := &UnknownPackagesError{Names: names, NotPackages: marker == notPackagesMarker}
		if !upe.NotPackages {
			upe.Suggestions = b.suggest(ctx, req, paths)
		}
		return upe
	}
	for _, line := range tail {
		if strings.Contains(line, nixosExternalInstance) {
			return &ModuleNixpkgsConfigError{}
		}
	}
	if old, ok := nixpkgsRefused(tail); ok {
		old.Nixpkgs = req.Nixpkgs.Path
		if old.Found == "" {
			old.Found, old.Program, _ = b.EvaluatorVersion(ctx)
		}
		return old
	}
	be.Stage, be.Expr = "evaluation", exprPath
	return be
}

func markerPayload(tail []string, marker string) ([][]string, bool) {
	for _, line := range tail {
		if _, rest, ok := strings.Cut(line, marker); ok {
			var paths [][]string
			if json.Unmarshal([]byte(strings.TrimSpace(rest)), &paths) == nil {
				return paths, true
			}
		}
	}
	return nil, false
}

// suggest asks Nix for the names beside each missing path. Best effort: a
// failure here only loses the suggestions, never the error itself.
func (b *Builder) suggest(ctx context.Context, req Request, missing [][]string) map[string][]string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	dir, err := templates.Materialise(b.Dirs.Templates())
	if err != nil {
		return nil
	}
	expr := nixgen.NamesExpr(b.nixgenRequest(req, dir), missing)
	quiet := nixRunner{log: b.Log}
	res, err := quiet.run(ctx, "nix-instantiate", "--eval", "--strict", "--json", "--expr", expr)
	if err != nil {
		b.Log.Debug().Err(err).Msg("listing package names for suggestions")
		return nil
	}
	var beside [][]string
	if json.Unmarshal([]byte(res.stdout), &beside) != nil || len(beside) != len(missing) {
		return nil
	}
	out := map[string][]string{}
	for i, path := range missing {
		prefix := strings.Join(path[:len(path)-1], ".")
		for _, s := range closest(path[len(path)-1], beside[i], 3) {
			if prefix != "" {
				s = prefix + "." + s
			}
			out[strings.Join(path, ".")] = append(out[strings.Join(path, ".")], s)
		}
	}
	return out
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
