package launch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/filelock"
)

// One sandbox per project: deciding whether a launch joins a running
// sandbox or starts one, for every backend. The decision and the
// registration happen under a per-project lock, so two launches at once
// cannot both start one; the record is written before the sandbox starts
// (for bubblewrap, before this process becomes bwrap), so the next launch
// finds it from the first instant.

// ConfigOf fingerprints every choice that shapes a sandbox: its closure and
// the run-time switches that change its mounts, network or environment.
// What only changes the program started in it (--shell, a command, Claude's
// arguments, --tmux) is not part of it: such launches share the sandbox.
func ConfigOf(backend, closure string, rt *Runtime) string {
	env := append([]string(nil), rt.ExtraEnv...)
	sort.Strings(env)
	h := sha256.New()
	fmt.Fprintf(h, "backend=%s\x00closure=%s\x00network=%t\x00protect-git=%t\x00nix-daemon=%t\x00desktop=%t\x00gh-token=%t\x00env=%s\x00home=%s",
		backend, closure, rt.Network, rt.ProtectGit, rt.NixDaemon, !rt.NoDesktop, rt.GHToken, strings.Join(env, ","), rt.Home)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Claim decides, for this process about to start a sandbox described by
// rec (its Project, Backend, Closure and Config set), between joining a
// running sandbox of the project with the same configuration (returned as
// join) and starting its own, in which case rec is completed with this
// process's identity and registered. Running sandboxes of the project with
// another configuration are returned as others. forceNew (--new) never
// joins.
func Claim(ctx context.Context, stateDir string, rec *Record, forceNew bool) (join *Record, others []*Record, err error) {
	// Held for milliseconds by a launch deciding: check often.
	unlock, err := filelock.Acquire(ctx, filepath.Join(stateDir, "sandboxes.lock"), 10*time.Millisecond)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	running, err := Running(stateDir)
	if err != nil {
		return nil, nil, err
	}
	for _, r := range running {
		if !forceNew && join == nil && r.Config == rec.Config && r.Backend == rec.Backend {
			join = r
			continue
		}
		others = append(others, r)
	}
	if join != nil {
		return join, others, nil
	}
	rec.ID = NewRecordID()
	rec.PID = os.Getpid()
	if rec.PIDStart, err = ProcessStart(rec.PID); err != nil {
		return nil, nil, fmt.Errorf("registering the sandbox: %w", err)
	}
	rec.Started = time.Now().UTC()
	if err := Register(stateDir, rec); err != nil {
		return nil, nil, fmt.Errorf("registering the sandbox: %w", err)
	}
	return nil, others, nil
}

// Notice is appended to Claude Code's system prompt (--append-system-prompt)
// so it knows where it runs and what outlives the session.
func Notice(backend string, rt *Runtime) string {
	var b strings.Builder
	fmt.Fprintf(&b, "You are running inside claude-sandbox (%s backend), a sandbox on the user's machine. ", backend)
	fmt.Fprintf(&b, "The project directory %s is shared read-write with the host, and so is ~/.claude. ", rt.Project)
	b.WriteString("The rest of the host is not visible: not its home directory (only ~/.gitconfig, ~/.config/git, ~/.config/gh and ~/.ssh are visible, read-only), not its environment variables, not its processes. ")
	if backend == "bubblewrap" {
		b.WriteString("What persists after the sandbox ends: the project directory, ~/.claude, ~/.local and /tmp (both kept per project). Everything else in the home directory is discarded. ")
	}
	if rt.ProtectGit {
		b.WriteString("The project's .git/config and .git/hooks are read-only: commits work, but `git config`, `git remote add` and setting an upstream do not; ask the user to run those on the host. ")
	}
	if rt.Network {
		b.WriteString("The network is available.")
	} else {
		b.WriteString("There is no network.")
	}
	return b.String()
}

// TmuxCommand wraps an interactive command in tmux, with the server's
// socket in the project state directory (TmuxSocket on the host). A second
// launch with --tmux attaches to the same session.
func TmuxCommand(inner []string) []string {
	return append([]string{"tmux", "-S", sandboxTmuxDir + "/" + TmuxSocketName, "new-session", "-A", "-s", "claude", "--"}, inner...)
}

// TmuxSocket is the host path of a --tmux sandbox's tmux socket.
func TmuxSocket(stateDir string) string {
	return filepath.Join(stateDir, "tmux", TmuxSocketName)
}
