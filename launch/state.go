package launch

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// StateRoot is $XDG_STATE_HOME/claude-sandbox (~/.local/state/claude-sandbox).
func StateRoot() (string, error) {
	state := os.Getenv("XDG_STATE_HOME")
	if !filepath.IsAbs(state) {
		home, err := os.UserHomeDir()
		if err != nil || home == "" {
			return "", errors.New("neither $XDG_STATE_HOME nor $HOME is set")
		}
		state = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(state, "claude-sandbox"), nil
}

// ProjectStateName is `<basename>-<first 12 hex of sha256(path + "\n")>`,
// the layout of the original project, so its state directories carry over.
func ProjectStateName(project string) string {
	sum := sha256.Sum256([]byte(project + "\n"))
	base := filepath.Base(project)
	// A basename is the user's text: keep it readable but harmless.
	base = strings.Map(func(r rune) rune {
		if r == '/' || r == 0 || r == '\n' || r < 0x20 {
			return '_'
		}
		return r
	}, base)
	if len(base) > 64 {
		base = base[:64]
	}
	return base + "-" + hex.EncodeToString(sum[:])[:12]
}

// ProjectStateDir returns (creating it) the per-project state directory:
// outside the project, so nothing the sandbox keeps between runs (browser
// profile, ~/.local, /tmp, the registry of running sandboxes) lands in the
// user's repository. A `path` file records which project owns it, so a hash
// collision is detected instead of two projects sharing state.
func ProjectStateDir(project string) (string, error) {
	root, err := StateRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "projects", ProjectStateName(project))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("creating the project state directory: %w", err)
	}
	owner := filepath.Join(dir, "path")
	switch recorded, err := os.ReadFile(owner); {
	case err == nil && string(recorded) != project+"\n":
		return "", fmt.Errorf("state directory %s belongs to %q, not %q", dir, strings.TrimSpace(string(recorded)), project)
	case errors.Is(err, os.ErrNotExist):
		// Written whole, then linked into place: two launches creating the
		// directory at once must not read each other's half-written file.
		tmp, err := os.CreateTemp(dir, ".path-")
		if err != nil {
			return "", err
		}
		_, werr := tmp.WriteString(project + "\n")
		tmp.Close()
		defer os.Remove(tmp.Name())
		if werr != nil {
			return "", werr
		}
		if err := os.Link(tmp.Name(), owner); errors.Is(err, os.ErrExist) {
			return ProjectStateDir(project) // the other launch won: check its file
		} else if err != nil {
			return "", err
		}
		tag := "Signature: 8a477f597d28d172789f06886806bc55\n# claude-sandbox per-project state; safe to delete when no sandbox runs.\n"
		_ = os.WriteFile(filepath.Join(dir, "CACHEDIR.TAG"), []byte(tag), 0o644)
	case err != nil:
		return "", err
	}
	return dir, nil
}
