package config

import (
	"path/filepath"

	"github.com/claude-sandbox/claude-sandbox/internal/dirs"
)

// ProjectFileNames are the names a project's file may have, in the
// project directory itself (not its parents: the project directory is the
// sandbox's whole writable world, and its file travels with it).
var ProjectFileNames = []string{"claude-sandbox.toml", ".claude-sandbox.toml"}

// UserPath is the user's file: $XDG_CONFIG_HOME/claude-sandbox/config.toml,
// else ~/.config/claude-sandbox/config.toml. Empty when neither is known.
func UserPath(getenv func(string) string) string {
	dir, err := dirs.Config(getenv)
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "config.toml")
}

// LoadUser loads the user's file; nil when there is none.
func LoadUser(getenv func(string) string) (*File, error) {
	p := UserPath(getenv)
	if p == "" {
		return nil, nil
	}
	return Load(p)
}

// LoadProject loads the file of a project directory (already resolved to
// its real path); nil when it has none. Two files at once is an error: which
// one counts would otherwise depend on a rule the reader may not know.
func LoadProject(dir string) (*File, error) {
	var found []*File
	for _, name := range ProjectFileNames {
		f, err := Load(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		if f != nil {
			found = append(found, f)
		}
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
		return found[0], nil
	}
	return nil, &FileError{Path: found[1].Path, Msg: "the project also has " + ProjectFileNames[0],
		hint: "keep one of " + ProjectFileNames[0] + " and " + ProjectFileNames[1]}
}
