package launch

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/dirs"
)

// The per-project state directory, outside the project (so nothing the
// sandbox keeps between runs lands in the user's repository):
//
//	$XDG_STATE_HOME/claude-sandbox/projects/<name>-<hash>/
//	  path            the project it belongs to (a hash collision is detected, not shared)
//	  CACHEDIR.TAG    backup tools skip it
//	  sandboxes/      the registry: one record per running sandbox, and its lock
//	  tmp/ local/ chromium/ tmux/   a sandbox's /tmp, ~/.local, browser profile, tmux socket
//	  guest/          a VM guest's persistent state
//	  vm/<id>/        a running VM's run directory (sockets, metadata share)
//	  placeholders/   what sandboxes made to hold missing protected names, one file each
const (
	StateTmp      = "tmp"
	StateLocal    = "local"
	StateChromium = "chromium"
	StateTmux     = "tmux"
	StateGuest    = "guest"
	StateVM       = "vm"
	// StatePlaceholders records the placeholders of protected names
	// (ProjectProtection) that sandboxes made in the project.
	StatePlaceholders = "placeholders"
)

// StateRoot is $XDG_STATE_HOME/claude-sandbox (~/.local/state/claude-sandbox).
func StateRoot() (string, error) { return dirs.State(os.Getenv) }

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

// ProjectStatePath is the project's state directory, created or not.
func ProjectStatePath(project string) (string, error) {
	root, err := StateRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "projects", ProjectStateName(project)), nil
}

// ProjectStateDir returns (creating it) the project's state directory.
func ProjectStateDir(project string) (string, error) {
	dir, err := ProjectStatePath(project)
	if err != nil {
		return "", err
	}
	return dir, EnsureProjectStateDir(dir, project)
}

// EnsureProjectStateDir creates dir as project's state directory, or checks
// that it is: a `path` file records which project owns it.
func EnsureProjectStateDir(dir, project string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the project state directory: %w", err)
	}
	owner := filepath.Join(dir, "path")
	switch recorded, err := os.ReadFile(owner); {
	case err == nil && string(recorded) != project+"\n":
		return fmt.Errorf("state directory %s belongs to %q, not %q", dir, strings.TrimSpace(string(recorded)), project)
	case errors.Is(err, os.ErrNotExist):
		// Written whole, then linked into place: two launches creating the
		// directory at once must not read each other's half-written file.
		tmp, err := os.CreateTemp(dir, ".path-")
		if err != nil {
			return err
		}
		_, werr := tmp.WriteString(project + "\n")
		tmp.Close()
		defer os.Remove(tmp.Name())
		if werr != nil {
			return werr
		}
		if err := os.Link(tmp.Name(), owner); errors.Is(err, os.ErrExist) {
			return EnsureProjectStateDir(dir, project) // the other launch won: check its file
		} else if err != nil {
			return err
		}
		tag := "Signature: 8a477f597d28d172789f06886806bc55\n# claude-sandbox per-project state; safe to delete when no sandbox runs.\n"
		_ = os.WriteFile(filepath.Join(dir, "CACHEDIR.TAG"), []byte(tag), 0o644)
	case err != nil:
		return err
	}
	return nil
}

// StateMounts are the project state a sandbox keeps between runs, bound
// over the user's home (home) and the tmux directory, and the HostDirs
// Start must make for them, given to owner when set. /tmp comes separately
// (TmpMount): it must precede everything placed inside /tmp.
func StateMounts(stateDir, home string, owner *Owner) ([]Mount, []HostDir) {
	if stateDir == "" {
		return nil, nil
	}
	mounts := []Mount{
		{Kind: Bind, Source: filepath.Join(stateDir, StateLocal), Dest: filepath.Join(home, ".local")},
		{Kind: Bind, Source: filepath.Join(stateDir, StateChromium), Dest: filepath.Join(home, ".config/chromium")},
		{Kind: Bind, Source: filepath.Join(stateDir, StateTmux), Dest: SandboxTmuxDir},
	}
	return mounts, stateDirs(stateDir, owner)
}

// TmpMount is the sandbox's /tmp: the project's own, kept between runs,
// or an empty tmpfs without a state directory.
func TmpMount(stateDir string) Mount {
	if stateDir == "" {
		return Mount{Kind: Tmpfs, Dest: "/tmp"}
	}
	return Mount{Kind: Bind, Source: filepath.Join(stateDir, StateTmp), Dest: "/tmp"}
}

func stateDirs(stateDir string, owner *Owner) []HostDir {
	var out []HostDir
	for _, sub := range []string{StateTmp, StateLocal, StateChromium, StateTmux} {
		out = append(out, HostDir{Path: filepath.Join(stateDir, sub), Mode: 0o700, Owner: owner})
	}
	return out
}
