package closure

import (
	"errors"
	"os"
	"path/filepath"
)

// Dirs are where claude-sandbox keeps its files.
type Dirs struct {
	Cache string // $XDG_CACHE_HOME/claude-sandbox: index, locks, templates, generated expressions
	State string // $XDG_STATE_HOME/claude-sandbox: GC roots (must survive a cache wipe)
}

// DefaultDirs follows the XDG base directory spec.
func DefaultDirs() (Dirs, error) {
	home, _ := os.UserHomeDir()
	cache := os.Getenv("XDG_CACHE_HOME")
	if !filepath.IsAbs(cache) {
		if home == "" {
			return Dirs{}, errors.New("neither $XDG_CACHE_HOME nor $HOME is set")
		}
		cache = filepath.Join(home, ".cache")
	}
	state := os.Getenv("XDG_STATE_HOME")
	if !filepath.IsAbs(state) {
		if home == "" {
			return Dirs{}, errors.New("neither $XDG_STATE_HOME nor $HOME is set")
		}
		state = filepath.Join(home, ".local", "state")
	}
	return Dirs{
		Cache: filepath.Join(cache, "claude-sandbox"),
		State: filepath.Join(state, "claude-sandbox"),
	}, nil
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
