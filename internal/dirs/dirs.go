// Package dirs is the one answer to where claude-sandbox keeps its files on
// the host: the cache ($XDG_CACHE_HOME/claude-sandbox), the state
// ($XDG_STATE_HOME/claude-sandbox: GC roots, trust records, per-project
// state) and the user's configuration ($XDG_CONFIG_HOME/claude-sandbox),
// following the XDG base directory specification. It computes paths only:
// it creates nothing.
package dirs

import (
	"fmt"
	"os"
	"path/filepath"
)

// Name is the directory every base directory holds for this program.
const Name = "claude-sandbox"

// Cache is $XDG_CACHE_HOME/claude-sandbox, else ~/.cache/claude-sandbox:
// what can be rebuilt (the index, locks, templates, generated expressions).
func Cache(getenv func(string) string) (string, error) {
	return base(getenv, "XDG_CACHE_HOME", ".cache")
}

// State is $XDG_STATE_HOME/claude-sandbox, else
// ~/.local/state/claude-sandbox: what must survive a cache wipe (GC roots,
// trust records, the per-project state of sandboxes).
func State(getenv func(string) string) (string, error) {
	return base(getenv, "XDG_STATE_HOME", filepath.Join(".local", "state"))
}

// Config is $XDG_CONFIG_HOME/claude-sandbox, else
// ~/.config/claude-sandbox: the user's configuration file.
func Config(getenv func(string) string) (string, error) {
	return base(getenv, "XDG_CONFIG_HOME", ".config")
}

// base applies the specification's rule: a relative value is ignored.
func base(getenv func(string) string, variable, underHome string) (string, error) {
	dir := getenv(variable)
	if !filepath.IsAbs(dir) {
		home := getenv("HOME")
		if home == "" {
			home, _ = os.UserHomeDir()
		}
		if home == "" {
			return "", fmt.Errorf("neither $%s nor $HOME is set", variable)
		}
		dir = filepath.Join(home, underHome)
	}
	return filepath.Join(dir, Name), nil
}
