package closure

import (
	"os"
	"path/filepath"

	"github.com/claude-sandbox/claude-sandbox/internal/dirs"
)

// Dirs are where claude-sandbox keeps its files.
type Dirs struct {
	Cache string // $XDG_CACHE_HOME/claude-sandbox: index, locks, templates, generated expressions
	State string // $XDG_STATE_HOME/claude-sandbox: GC roots (must survive a cache wipe)
}

// DefaultDirs are the XDG base directories (internal/dirs).
func DefaultDirs() (Dirs, error) {
	cache, err := dirs.Cache(os.Getenv)
	if err != nil {
		return Dirs{}, err
	}
	state, err := dirs.State(os.Getenv)
	if err != nil {
		return Dirs{}, err
	}
	return Dirs{Cache: cache, State: state}, nil
}

func (d Dirs) index() string       { return filepath.Join(d.Cache, "index") }
func (d Dirs) locks() string       { return filepath.Join(d.Cache, "locks") }
func (d Dirs) exprs() string       { return filepath.Join(d.Cache, "exprs") }
func (d Dirs) nixpkgsRefs() string { return filepath.Join(d.Cache, "nixpkgs") }
func (d Dirs) gcroots() string     { return filepath.Join(d.State, "gcroots") }

// Templates is where the template bundle is materialised.
func (d Dirs) Templates() string { return filepath.Join(d.Cache, "templates") }

func (d Dirs) entryFile(key string) string { return filepath.Join(d.index(), key+".json") }
func (d Dirs) lockFile(key string) string  { return filepath.Join(d.locks(), key+".lock") }
func (d Dirs) exprFile(key string) string  { return filepath.Join(d.exprs(), key+".nix") }
func (d Dirs) gcroot(key string) string    { return filepath.Join(d.gcroots(), key) }
