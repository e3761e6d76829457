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
// so it knows where it runs, what outlives the session and what it cannot
// change.
func Notice(backend Backend, rt *Runtime) string {
	var b strings.Builder
	fmt.Fprintf(&b, "You are running inside claude-sandbox (%s backend), a sandbox on the user's machine. ", backend.Name())
	protects := backend.Traits().Protects
	if !protects || rt.unprotected("~/.claude") {
		fmt.Fprintf(&b, "The project directory %s is shared read-write with the host, and so is ~/.claude. ", rt.Project)
	} else {
		fmt.Fprintf(&b, "The project directory %s is shared read-write with the host. ", rt.Project)
	}
	b.WriteString("The rest of the host is not visible: not its home directory (only ~/.gitconfig, ~/.config/git, ~/.config/gh and ~/.ssh are visible, read-only), not its environment variables, not its processes. ")
	if p := backend.Traits().Persistence; p != "" {
		b.WriteString(p + " ")
	}
	if protects {
		b.WriteString(ProtectionNotice(rt))
	}
	b.WriteString(networkNotice(rt.Egress))
	return b.String()
}

// ProtectionNotice tells Claude what it cannot change and why, so that a
// refused write is understood: "" when nothing is protected.
func ProtectionNotice(rt *Runtime) string {
	if !rt.Protect {
		return ""
	}
	var b strings.Builder
	var project []string
	for _, p := range ProjectProtected {
		if rt.unprotected(p.Rel) || (strings.HasPrefix(p.Rel, gitRel+"/") && rt.unprotected(gitRel)) {
			continue
		}
		name := p.Rel
		if p.Dir {
			name += "/"
		}
		project = append(project, name)
	}
	if len(project) > 0 {
		fmt.Fprintf(&b, "Files the host runs or obeys by itself are read-only here, so that nothing in this sandbox can plant code the user's machine runs later: in the project, %s (one that does not exist cannot be created either; git commits still work, but `git config`, `git remote add`, setting an upstream and adding submodules do not). ", strings.Join(project, ", "))
	}
	if !rt.unprotected("~/.claude") {
		var kept []string
		for _, r := range ClaudeRecorded {
			kept = append(kept, r.Name)
		}
		b.WriteString("In ~/.claude, only " + strings.Join(kept, ", ") + " are saved to the host; Claude Code's configuration there (settings.json, CLAUDE.md, commands, agents, skills, plugins, hooks, output styles) is the user's, read-only, and anything else written in ~/.claude stays in this sandbox and is gone when it ends. ")
	}
	b.WriteString("When a change to one of these is needed (a permission rule, a hook, an MCP server, editor or git settings), say so and ask the user to make it on the host, or to allow it with --unprotect. ")
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
