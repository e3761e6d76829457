package launch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ProjectError is a project directory that cannot be used.
type ProjectError struct {
	Path   string
	Reason string
	hint   string
}

func (e *ProjectError) Error() string { return fmt.Sprintf("project %q: %s", e.Path, e.Reason) }
func (e *ProjectError) Hint() string  { return e.hint }

// ResolveProject returns the real, absolute path of a project directory. The
// sandbox binds it at that real path, so a symlinked spelling still gives one
// sandbox per directory. Directories whose binding would expose more than a
// project (/, the home directory, system trees) need force.
func ResolveProject(path string, force bool) (string, error) {
	if path == "" {
		path = "."
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", &ProjectError{Path: path, Reason: err.Error()}
	}
	real, err := filepath.EvalSymlinks(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return "", &ProjectError{Path: path, Reason: "does not exist", hint: "create it first, or check the spelling"}
	}
	if err != nil {
		return "", &ProjectError{Path: path, Reason: err.Error()}
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", &ProjectError{Path: path, Reason: err.Error()}
	}
	if !st.IsDir() {
		return "", &ProjectError{Path: path, Reason: "is not a directory", hint: "pass the directory that holds the project"}
	}
	if strings.ContainsAny(real, "\x00") {
		return "", &ProjectError{Path: path, Reason: "contains a NUL byte"}
	}
	if real == "/" {
		return "", &ProjectError{Path: path, Reason: "is the root directory: the sandbox would see and write the whole machine", hint: "pass a project directory"}
	}
	for _, system := range []string{"/nix", "/proc", "/sys", "/dev", "/etc", "/usr", "/boot", "/run"} {
		if real == system || strings.HasPrefix(real, system+"/") {
			return "", &ProjectError{Path: path, Reason: "is inside " + system + ", which the sandbox sets up itself", hint: "pass a project directory under your home or /srv"}
		}
	}
	if !force {
		if home, err := os.UserHomeDir(); err == nil && home != "" {
			if realHome, err := filepath.EvalSymlinks(home); err == nil {
				home = realHome
			}
			if real == home || strings.HasPrefix(home, real+"/") {
				return "", &ProjectError{Path: path, Reason: "is your home directory or contains it: the sandbox could read every secret in it",
					hint: "pass a project directory inside it, or --force if you really mean it"}
			}
		}
	}
	return real, nil
}
