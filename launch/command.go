package launch

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// Paths of the tmux socket: inside the sandbox, and its name in the
// project state directory's tmux/, where the host attaches with tmux -S.
const (
	SandboxTmuxDir = "/run/claude-sandbox/tmux"
	TmuxSocketName = "socket"
)

// Command decides, once, the program a launch runs: the command asked for
// (exec), a login shell (--shell), or Claude Code told where it runs, with
// the user's arguments; with --tmux, inside tmux.
func Command(b Backend, m *manifest.Manifest, rt *Runtime) []string {
	var cmd []string
	switch {
	case len(rt.Command) > 0:
		return rt.Command
	case rt.Shell:
		cmd = []string{m.Shell, "-l"}
	default:
		cmd = append([]string{m.Claude, "--append-system-prompt", Notice(b, rt)}, rt.ClaudeArgs...)
	}
	if rt.Tmux {
		return TmuxCommand(cmd)
	}
	return cmd
}

// EnterCommand decides what `enter` runs in a running sandbox: the command
// asked for, else a login shell from the sandbox's own closure.
func EnterCommand(rec *Record, rt *Runtime) []string {
	if len(rt.Command) > 0 {
		return rt.Command
	}
	if m, err := manifest.Load(rec.Closure); err == nil {
		return []string{m.Shell, "-l"}
	}
	return []string{"bash", "-l"}
}

// Notice is appended to Claude Code's system prompt (--append-system-prompt)
// so it knows where it runs and what outlives the session.
func Notice(backend Backend, rt *Runtime) string {
	var b strings.Builder
	fmt.Fprintf(&b, "You are running inside claude-sandbox (%s backend), a sandbox on the user's machine. ", backend.Name())
	fmt.Fprintf(&b, "The project directory %s is shared read-write with the host, and so is ~/.claude. ", rt.Project)
	b.WriteString("The rest of the host is not visible: not its home directory (only ~/.gitconfig, ~/.config/git, ~/.config/gh and ~/.ssh are visible, read-only), not its environment variables, not its processes. ")
	if p := backend.Traits().Persistence; p != "" {
		b.WriteString(p + " ")
	}
	if rt.ProtectGit {
		b.WriteString("The project's .git/config and .git/hooks are read-only: commits work, but `git config`, `git remote add` and setting an upstream do not; ask the user to run those on the host. ")
	}
	b.WriteString(networkNotice(rt.Egress))
	return b.String()
}

// TmuxCommand wraps an interactive command in tmux, with the server's
// socket in the project state directory (TmuxSocket on the host). A second
// launch with --tmux attaches to the same session.
func TmuxCommand(inner []string) []string {
	return append([]string{"tmux", "-S", SandboxTmuxDir + "/" + TmuxSocketName, "new-session", "-A", "-s", "claude", "--"}, inner...)
}

// TmuxSocket is the host path of a --tmux sandbox's tmux socket.
func TmuxSocket(stateDir string) string {
	return filepath.Join(stateDir, "tmux", TmuxSocketName)
}
