package launch

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Claude Code's ~/.claude inside a sandbox. What Claude Code records there
// for the user (transcripts, prompt history, the login it refreshes) is the
// host's, read-write; what it executes or obeys (settings and their hooks,
// CLAUDE.md, commands, agents, skills, plugins, output styles, …) is the
// host's too, but read-only; and the rest is the sandbox's own.
//
// ~/.claude inside is a directory of the sandbox's own (in its memory,
// gone with it): every name Claude Code creates there lands in it and never
// reaches the host, which is what keeps a protected name that the host
// lacks from reaching the host. In it:
//   - the recorded entries, bound read-write from the host's ~/.claude
//     (made there if missing: it is Claude Code's own data directory);
//   - settings.json, when the host has one, bound read-only: writing it
//     fails, even by Claude Code's write-and-rename;
//   - every other host entry, a link to the host's ~/.claude, which is
//     bound read-only at ClaudeHostView: readable, not writable (replacing
//     the link changes the sandbox's copy only);
//   - every obeyed name the host lacks, an empty unwritable mount point
//     (claudeAbsent), so that it cannot be created inside either;
//   - Claude Code's per-session state starts empty: the host's belongs to
//     other sessions (some of it is sourced by their shells).
//
// Writes that fail in ~/.claude fail cleanly: Claude Code keeps its
// temporary files and lock directories beside the file they are for, in
// the sandbox's own directory.

// ClaudeHostView is where the host's ~/.claude is visible read-only
// inside, for the links in the sandbox's own ~/.claude.
const ClaudeHostView = "/run/claude-sandbox/host-claude"

// ClaudeEntry is a name in ~/.claude.
type ClaudeEntry struct {
	Name string
	Dir  bool
	Why  string
}

// ClaudeRecorded is what Claude Code records in ~/.claude that stays the
// host's: bound read-write, made on the host when missing. The credentials
// file is an entry of its own (a credential broker may put a placeholder
// copy there instead).
var ClaudeRecorded = []ClaudeEntry{
	{"projects", true, "session transcripts and per-project memory"},
	{"history.jsonl", false, "prompt history"},
	{".credentials.json", false, "the login Claude Code refreshes"},
}

// ClaudeObeyed names what Claude Code executes or obeys in ~/.claude (for
// the notice, doctor and the documentation): settings and the hooks,
// status line and permissions they hold, instructions, commands, agents,
// skills, plugins (their MCP servers and hooks), output styles, rules,
// workflows, key bindings, a local installation of Claude Code, Claude in
// Chrome's native host. Every host entry that is not recorded and not
// per-session state is read-only inside, listed here or not.
var ClaudeObeyed = []ClaudeEntry{
	{"settings.json", false, ""}, {"settings.local.json", false, ""}, {"CLAUDE.md", false, ""},
	{"commands", true, ""}, {"agents", true, ""}, {"skills", true, ""}, {"hooks", true, ""},
	{"plugins", true, ""}, {"output-styles", true, ""}, {"rules", true, ""}, {"workflows", true, ""},
	{"keybindings.json", false, ""}, {"loop.md", false, ""}, {"local", true, ""}, {"chrome", true, ""},
}

// ClaudeObeyedNames are ClaudeObeyed's names.
func ClaudeObeyedNames() []string {
	out := make([]string, len(ClaudeObeyed))
	for i, e := range ClaudeObeyed {
		out[i] = e.Name
	}
	return out
}

func obeyed(name string) (ClaudeEntry, bool) {
	for _, e := range ClaudeObeyed {
		if e.Name == name {
			return e, true
		}
	}
	return ClaudeEntry{}, false
}

// claudeSessionState is the per-session state Claude Code keeps in
// ~/.claude (2.1): inside, the sandbox's own. Not shown from the host:
// it belongs to other sessions, and some of it a session's shell sources
// (shell-snapshots, session-env) or its daemon runs (jobs).
var claudeSessionState = []string{
	"backups", "cache", "daemon", "debug", "dump-prompts", "feedback-bundles", "file-history", "ide",
	"image-cache", "jobs", "paste-cache", "plans", "session-env", "sessions", "shares", "shell-snapshots",
	"startup-perf", "statsig", "tasks", "teams", "telemetry", "todos", "traces", "uploads", "usage-data",
	".deep-link-register-failed", ".last-cleanup", ".last-update-result.json", ".update.lock",
	"daemon.json", "daemon.lock", "daemon.log", "daemon.scheduled.status.json", "daemon.status.json",
	"gh-pr-status-cache.json", "hfi-auth.json", "mcp-needs-auth-cache.json", "stats-cache.json",
}

// claudeLegacyConfig is Claude Code's global configuration when it is kept
// in ~/.claude rather than ~/.claude.json: copied like ~/.claude.json.
const claudeLegacyConfig = ".config.json"

// claudeSettings is bound read-only, not linked, where the host has it.
const claudeSettings = "settings.json"

// ClaudeHome decides ~/.claude inside: its mounts (after the home
// directory), what Start makes first, and the protected list.
func ClaudeHome(u UserFiles, rt *Runtime) ([]Mount, []HostDir, []Protected) {
	claude := filepath.Join(u.Home, ".claude")
	hostDir, exists := claudeHostDir(claude, u)
	if !exists && !(u.MayCreate && isDir(u.Home)) {
		// Nowhere to keep anything: the sandbox's own, in memory, its
		// obeyed names held all the same.
		mounts := []Mount{{Kind: Dir, Dest: claude, Mode: 0o700}}
		list := []Protected{{Path: claude, Shown: "~/.claude", Cover: CoverSandboxOnly, Why: "no ~/.claude on the host"}}
		if rt.unprotected("~/.claude") {
			return mounts, nil, list
		}
		m, l := claudeAbsent(claude, claude, nil, rt)
		return append(mounts, m...), nil, append(list, l...)
	}
	var prepare []HostDir
	if !exists {
		prepare = append(prepare, HostDir{Path: claude, Mode: 0o700, Owner: u.Owner})
	}
	if rt.unprotected("~/.claude") {
		// As before protection: the host's, read-write.
		return []Mount{{Kind: Bind, Source: hostDir, Dest: claude}}, prepare, nil
	}
	return claudeSkeleton(claude, hostDir, exists, u, rt, prepare)
}

// claudeHostDir says whether the host's ~/.claude exists as a directory
// the launch may use: a symlink to one only for the user's own launch.
func claudeHostDir(claude string, u UserFiles) (string, bool) {
	st, err := os.Lstat(claude)
	switch {
	case err == nil && st.IsDir():
		return claude, true
	case err == nil && st.Mode()&fs.ModeSymlink != 0 && u.Owner == nil && isDir(claude):
		// A dotfiles manager's link: the user's own to follow, never a
		// root launcher's.
		return claude, true
	}
	return claude, false
}

func claudeSkeleton(claude, hostDir string, exists bool, u UserFiles, rt *Runtime, prepare []HostDir) ([]Mount, []HostDir, []Protected) {
	mounts := []Mount{
		{Kind: Dir, Dest: claude, Mode: 0o700},
		{Kind: ROBind, Source: hostDir, Dest: ClaudeHostView},
	}
	var entries []fs.DirEntry
	if exists {
		entries, _ = os.ReadDir(hostDir)
	}
	present := make(map[string]fs.DirEntry, len(entries))
	for _, e := range entries {
		present[e.Name()] = e
	}
	var list []Protected
	shown := func(name string) string { return "~/.claude/" + name }

	for _, r := range ClaudeRecorded {
		p := filepath.Join(hostDir, r.Name)
		e, ok := present[r.Name]
		switch {
		case !ok:
			prepare = append(prepare, HostDir{Path: p, Mode: recordedMode(r), Owner: u.Owner, File: !r.Dir})
		case e.Type()&fs.ModeSymlink != 0 && u.Owner != nil:
			continue // a root launcher never follows a link in the user's home
		case e.IsDir() != r.Dir && e.Type()&fs.ModeSymlink == 0:
			continue // not what Claude Code keeps there: left alone
		}
		mounts = append(mounts, Mount{Kind: Bind, Source: p, Dest: filepath.Join(claude, r.Name)})
	}
	for _, e := range entries {
		name := e.Name()
		p := filepath.Join(hostDir, name)
		inside := filepath.Join(claude, name)
		switch {
		case isRecorded(name), isSessionState(name):
			continue
		case name == claudeLegacyConfig:
			if e.Type().IsRegular() {
				mounts = append(mounts, Mount{Kind: File, Source: p, Dest: inside, Mode: 0o600, Secret: true, Optional: true})
			}
			continue
		case rt.unprotected(shown(name)):
			mounts = append(mounts, Mount{Kind: Bind, Source: p, Dest: inside})
			continue
		case name == claudeSettings && e.Type().IsRegular():
			mounts = append(mounts, Mount{Kind: ROBind, Source: p, Dest: inside})
			list = append(list, Protected{Path: p, Shown: shown(name), Cover: CoverReadOnly, Why: "Claude Code's settings: permissions, hooks, environment"})
			continue
		}
		mounts = append(mounts, Mount{Kind: Symlink, Source: filepath.Join(ClaudeHostView, name), Dest: inside})
		if _, ok := obeyed(name); ok {
			list = append(list, Protected{Path: p, Shown: shown(name), Cover: CoverLinked})
		}
	}
	for _, name := range rt.Unprotect {
		// An unprotected directory the host lacks is made, so it persists.
		rest, ok := strings.CutPrefix(name, "~/.claude/")
		if e, known := obeyed(rest); !ok || !known || !e.Dir || present[rest] != nil {
			continue
		}
		p := filepath.Join(hostDir, rest)
		prepare = append(prepare, HostDir{Path: p, Mode: 0o755, Owner: u.Owner})
		mounts = append(mounts, Mount{Kind: Bind, Source: p, Dest: filepath.Join(claude, rest)})
	}
	m, l := claudeAbsent(claude, hostDir, present, rt)
	return append(mounts, m...), prepare, append(list, l...)
}

// claudeAbsent holds the obeyed names the host's ~/.claude lacks: each an
// empty directory inside that allows no writing, a mount point, so that
// neither a process inside nor Claude Code itself can create it (Claude
// Code's own write of its settings then fails at once, rather than
// succeeding in memory and being lost when the sandbox ends). Claude Code
// 2.1 takes a directory where it expects settings.json or CLAUDE.md as
// absent. Nothing of it is on the host: the mount points are in the
// sandbox's own ~/.claude.
func claudeAbsent(claude, hostDir string, present map[string]fs.DirEntry, rt *Runtime) ([]Mount, []Protected) {
	var mounts []Mount
	var list []Protected
	for _, e := range ClaudeObeyed {
		shown := "~/.claude/" + e.Name
		if _, ok := present[e.Name]; ok || rt.unprotected(shown) {
			continue
		}
		mounts = append(mounts, Mount{Kind: Tmpfs, Dest: filepath.Join(claude, e.Name), Mode: 0o555})
		list = append(list, Protected{Path: filepath.Join(hostDir, e.Name), Shown: shown, Cover: CoverAbsent})
	}
	return mounts, list
}

func recordedMode(r ClaudeEntry) fs.FileMode {
	if r.Dir {
		return 0o700
	}
	return 0o600
}

func isRecorded(name string) bool {
	for _, r := range ClaudeRecorded {
		if r.Name == name {
			return true
		}
	}
	return false
}

// isSessionState: per-session state, and the lock directories and
// temporary files Claude Code makes beside what it writes.
func isSessionState(name string) bool {
	return slices.Contains(claudeSessionState, name) || strings.HasSuffix(name, ".lock") || strings.Contains(name, ".tmp.")
}
