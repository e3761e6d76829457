package launch

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/placeholder"
)

// Protection: nothing inside a sandbox can plant code that the host runs
// later. What the host runs or obeys without being asked — Claude Code's
// own configuration, and in the project the files editors, direnv, git and
// Claude Code pick up by themselves — is visible inside but cannot be
// changed, created or replaced there. This file holds the one list of
// those paths (every backend renders it; the VM guest reads it from
// Plan.Protected) and decides how each is covered.
//
// The switch is Runtime.Protect (--protect, protect = false turns it all
// off); Runtime.Unprotect leaves single paths writable (--unprotect,
// unprotect = [...], a widening under the trust model). --protect-git=false
// is --unprotect .git.

// ProtectedPath is a path in the project the host runs or obeys by itself.
type ProtectedPath struct {
	Rel string // relative to the project
	Dir bool   // a directory
	Why string
}

// ProjectProtected are the protected paths of every project. A missing
// one is held by an empty placeholder directory for the sandbox's life,
// so that it cannot be created inside either: a directory named .envrc
// or .mcp.json is ignored by direnv (2.30.1 and later: it loads only a
// regular file) and by Claude Code (it reports the project's MCP
// configuration as not a regular file and starts no server from it).
var ProjectProtected = []ProtectedPath{
	{".claude", true, "Claude Code's project settings, hooks, commands, agents, skills and rules"},
	{".mcp.json", false, "the MCP servers Claude Code starts"},
	{".envrc", false, "what direnv runs on cd"},
	{".vscode", true, "VS Code's tasks, launch configurations and settings"},
	{".idea", true, "JetBrains IDEs' run configurations and tools"},
	{".git/config", false, "what git runs: hooks path, fsmonitor, filters, aliases"},
	{".git/hooks", true, "git's hooks"},
	{".git/modules", true, "submodules' git configuration and hooks"},
}

// gitRel is the name --protect-git=false unprotects.
const gitRel = ".git"

// ProtectionError is a protected path that cannot be protected as it is.
type ProtectionError struct {
	Path   string
	Reason string
}

func (e *ProtectionError) Error() string {
	return fmt.Sprintf("cannot protect %s: %s", e.Path, e.Reason)
}

func (e *ProtectionError) Hint() string {
	return "replace it with what it points to, or leave it writable with --unprotect (unprotect = [...] in the configuration)"
}

// UnprotectError is an --unprotect entry that names nothing protected.
type UnprotectError struct {
	Entry  string
	Reason string
}

func (e *UnprotectError) Error() string {
	return fmt.Sprintf("--unprotect %q: %s", e.Entry, e.Reason)
}

func (e *UnprotectError) Hint() string {
	return "name a protected path relative to the project (" + strings.Join(protectedRels(), ", ") + ", or what lies under .claude) or under ~/.claude (~/.claude/settings.json, ~/.claude for all of it)"
}

func protectedRels() []string {
	out := []string{gitRel}
	for _, p := range ProjectProtected {
		out = append(out, p.Rel)
	}
	return out
}

// CleanUnprotect checks and normalises --unprotect entries: a path
// relative to the project at or below a protected one (".vscode",
// ".claude/worktrees", ".git"), or ~/.claude and what lies in it.
func CleanUnprotect(entries []string) ([]string, error) {
	var out []string
	for _, e := range entries {
		c, err := cleanUnprotect(e)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out, nil
}

func cleanUnprotect(e string) (string, error) {
	raw := e
	if e == "" || strings.ContainsAny(e, "\x00\n") {
		return "", &UnprotectError{Entry: raw, Reason: "not a path"}
	}
	if rest, ok := strings.CutPrefix(e, "~/"); ok {
		c := filepath.Clean(rest)
		name, ok := strings.CutPrefix(c, ".claude/")
		switch {
		case c == ".claude":
		case !ok:
			return "", &UnprotectError{Entry: raw, Reason: "only ~/.claude and what it holds are protected in the home directory"}
		case strings.Contains(name, "/") || name == "..":
			return "", &UnprotectError{Entry: raw, Reason: "in ~/.claude, name an entry of its own (~/.claude/commands), not something inside one"}
		}
		return "~/" + c, nil
	}
	if filepath.IsAbs(e) {
		return "", &UnprotectError{Entry: raw, Reason: "a path relative to the project, or under ~/.claude"}
	}
	c := filepath.Clean(e)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", &UnprotectError{Entry: raw, Reason: "outside the project"}
	}
	if c == gitRel {
		return c, nil
	}
	for _, p := range ProjectProtected {
		if c == p.Rel || (p.Dir && strings.HasPrefix(c, p.Rel+"/")) {
			return c, nil
		}
	}
	return "", &UnprotectError{Entry: raw, Reason: "not protected, so already writable"}
}

// unprotected says whether rt leaves rel (a project path, or ~/.claude/…)
// writable: itself or a parent is unprotected, or protection is off.
func (rt *Runtime) unprotected(rel string) bool {
	if !rt.Protect {
		return true
	}
	for _, u := range rt.Unprotect {
		if rel == u || strings.HasPrefix(rel, u+"/") {
			return true
		}
	}
	return false
}

// unprotectedBelow lists the unprotected entries strictly below rel.
func (rt *Runtime) unprotectedBelow(rel string) []string {
	var out []string
	for _, u := range rt.Unprotect {
		if strings.HasPrefix(u, rel+"/") {
			out = append(out, u)
		}
	}
	return out
}

// How a protected path is covered inside.
const (
	// CoverReadOnly: the host's own file or directory, bound read-only.
	CoverReadOnly = "read-only"
	// CoverPlaceholder: missing on the host; an empty directory made at
	// Start holds an empty, unwritable directory in its place inside, and
	// is removed when the last sandbox using it ends.
	CoverPlaceholder = "placeholder"
	// CoverLinked: in ~/.claude, a link in the sandbox's own ~/.claude to
	// the host's entry, bound read-only: it can be replaced inside, never
	// changed on the host.
	CoverLinked = "read-only link"
	// CoverAbsent: in ~/.claude, missing on the host: an empty, unwritable
	// directory of the sandbox's own stands in its place (a mount point:
	// it can be neither written, removed nor replaced); nothing is made on
	// the host.
	CoverAbsent = "absent, held"
	// CoverSandboxOnly: ~/.claude itself when the host has none and the
	// launch may not make one: the sandbox's own, in memory.
	CoverSandboxOnly = "sandbox only"
)

// Protected is one protected path as a plan covers it, for --dry-run,
// the session notice, doctor, and a backend that renders the protection
// its own way (the VM guest).
type Protected struct {
	Path  string `json:"path"`  // on the host (the same path inside)
	Shown string `json:"shown"` // as the user names it: .vscode, ~/.claude/settings.json
	Cover string `json:"cover"` // Cover*
	Why   string `json:"why,omitempty"`
}

// ProjectProtection decides the project's protected paths: the mounts
// that cover them (rendered after the project's own bind), what Start must
// make first, and the list for the plan. owner: who a root launcher makes
// directories for. Like every planning step it writes nothing.
func ProjectProtection(project string, rt *Runtime, owner *Owner) ([]Mount, []HostDir, []Protected, error) {
	if !rt.Protect {
		return nil, nil, nil, nil
	}
	var mounts []Mount
	var prepare []HostDir
	var list []Protected
	if !rt.unprotected(gitRel) {
		m, p, l := protectGit(project, rt, owner)
		mounts, prepare, list = append(mounts, m...), append(prepare, p...), append(list, l...)
	}
	for _, pp := range ProjectProtected {
		if strings.HasPrefix(pp.Rel, gitRel+"/") || rt.unprotected(pp.Rel) {
			continue
		}
		m, p, l, err := protectPath(project, pp, rt, owner)
		if err != nil {
			return nil, nil, nil, err
		}
		mounts, prepare, list = append(mounts, m...), append(prepare, p...), append(list, l...)
	}
	return mounts, prepare, list, nil
}

// protectPath covers one protected path of the project: the host's own,
// read-only; a missing one, a placeholder; what is unprotected below it,
// read-write again.
func protectPath(project string, pp ProtectedPath, rt *Runtime, owner *Owner) ([]Mount, []HostDir, []Protected, error) {
	records := placeholderRecords(rt.StateDir)
	path := filepath.Join(project, pp.Rel)
	below := rt.unprotectedBelow(pp.Rel)
	entry := Protected{Path: path, Shown: pp.Rel, Why: pp.Why}
	var mounts []Mount
	var prepare []HostDir
	st, err := os.Lstat(path)
	switch {
	case err == nil && st.Mode()&fs.ModeSymlink != 0:
		// A mount covers what a link points to, never the link: the name
		// itself could still be replaced inside.
		return nil, nil, nil, &ProtectionError{Path: path, Reason: "it is a symbolic link"}
	case err == nil && st.IsDir() && len(below) == 0 && placeholder.Recorded(records, path):
		// Left by a sandbox that was killed: held again, removed at the end.
		entry.Cover = CoverPlaceholder
		prepare = append(prepare, HostDir{Path: path, Mode: 0o755, Owner: owner, Placeholder: true})
		mounts = append(mounts, placeholderMount(path))
	case err == nil:
		entry.Cover = CoverReadOnly
		mounts = append(mounts, Mount{Kind: ROBind, Source: path, Dest: path})
	case errors.Is(err, fs.ErrNotExist) && len(below) > 0:
		// Made for good: what the user keeps writable lives in it.
		entry.Cover = CoverReadOnly
		prepare = append(prepare, HostDir{Path: path, Mode: 0o755, Owner: owner})
		mounts = append(mounts, Mount{Kind: ROBind, Source: path, Dest: path})
	case errors.Is(err, fs.ErrNotExist):
		entry.Cover = CoverPlaceholder
		prepare = append(prepare, HostDir{Path: path, Mode: 0o755, Owner: owner, Placeholder: true})
		mounts = append(mounts, placeholderMount(path))
	default:
		return nil, nil, nil, &ProtectionError{Path: path, Reason: err.Error()}
	}
	for _, u := range below {
		p := filepath.Join(project, u)
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			prepare = append(prepare, HostDir{Path: p, Mode: 0o755, Owner: owner})
		}
		mounts = append(mounts, Mount{Kind: Bind, Source: p, Dest: p})
	}
	return mounts, prepare, []Protected{entry}, nil
}

// placeholderMount is what a placeholder shows inside: an empty directory
// of its own whose mode allows no writing. Writing a file of the missing
// name fails (it is a directory), and so does removing or renaming it (a
// mount point). A tmpfs rather than a read-only bind, which bwrap makes
// four times slower (it rereads the mount table for each); under bwrap the
// sandbox's user owns it and could make it writable again, but what it
// then holds lives in the sandbox's memory, never on the host.
func placeholderMount(path string) Mount {
	return Mount{Kind: Tmpfs, Dest: path, Mode: 0o555}
}

// protectGit: .git/config, .git/hooks and .git/modules read-only, and
// .git itself a mount point, which can be neither renamed nor removed:
// otherwise the sandbox could move .git aside and put a new one with its
// own hooks in its place. A hooks directory the repository's configuration
// names inside the project (core.hooksPath, as husky sets it) is covered
// like .git/hooks.
//
// A missing .git/hooks is made for good (git makes one anyway); a missing
// .git/modules is a placeholder (git makes it when a submodule is added,
// which then fails inside).
func protectGit(project string, rt *Runtime, owner *Owner) ([]Mount, []HostDir, []Protected) {
	git := filepath.Join(project, gitRel)
	st, err := os.Lstat(git)
	if err != nil {
		return nil, nil, nil
	}
	if st.Mode().IsRegular() {
		// A linked worktree's .git file names its git directory: keep it.
		return []Mount{{Kind: ROBind, Source: git, Dest: git}}, nil,
			[]Protected{{Path: git, Shown: gitRel, Cover: CoverReadOnly, Why: "names the git directory"}}
	}
	if !st.IsDir() {
		return nil, nil, nil
	}
	mounts := []Mount{{Kind: Bind, Source: git, Dest: git}}
	var prepare []HostDir
	var list []Protected
	for _, pp := range ProjectProtected {
		if !strings.HasPrefix(pp.Rel, gitRel+"/") || rt.unprotected(pp.Rel) {
			continue
		}
		p := filepath.Join(project, pp.Rel)
		entry := Protected{Path: p, Shown: pp.Rel, Cover: CoverReadOnly, Why: pp.Why}
		_, err := os.Lstat(p)
		switch {
		case err == nil:
			mounts = append(mounts, Mount{Kind: ROBind, Source: p, Dest: p})
		case !errors.Is(err, fs.ErrNotExist), !pp.Dir:
			continue
		case pp.Rel == ".git/hooks":
			prepare = append(prepare, HostDir{Path: p, Mode: 0o755, Owner: owner})
			mounts = append(mounts, Mount{Kind: ROBind, Source: p, Dest: p})
		default:
			entry.Cover = CoverPlaceholder
			prepare = append(prepare, HostDir{Path: p, Mode: 0o755, Owner: owner, Placeholder: true})
			mounts = append(mounts, placeholderMount(p))
		}
		list = append(list, entry)
	}
	if hooks := hooksPathInProject(project); hooks != "" && !rt.unprotected(hooks) {
		p := filepath.Join(project, hooks)
		entry := Protected{Path: p, Shown: hooks, Cover: CoverReadOnly, Why: "git's hooks (core.hooksPath)"}
		switch st, err := os.Lstat(p); {
		case err == nil && st.IsDir():
			mounts = append(mounts, Mount{Kind: ROBind, Source: p, Dest: p})
			list = append(list, entry)
		case errors.Is(err, fs.ErrNotExist) && isDir(filepath.Dir(p)):
			entry.Cover = CoverPlaceholder
			prepare = append(prepare, HostDir{Path: p, Mode: 0o755, Owner: owner, Placeholder: true})
			mounts = append(mounts, placeholderMount(p))
			list = append(list, entry)
		}
	}
	return mounts, prepare, list
}

// hooksPathInProject reads core.hooksPath from the repository's own
// configuration and returns it relative to the project when it names a
// directory inside it (not the project itself, not inside .git), else "".
// Only the repository's file is read (no includes): husky and similar
// tools write it there.
func hooksPathInProject(project string) string {
	data, err := os.ReadFile(filepath.Join(project, ".git", "config"))
	if err != nil || len(data) > 1<<20 {
		return ""
	}
	v := gitConfigValue(data, "core", "hookspath")
	if v == "" || strings.HasPrefix(v, "~") {
		return ""
	}
	if !filepath.IsAbs(v) {
		v = filepath.Join(project, v)
	}
	rel, err := filepath.Rel(project, filepath.Clean(v))
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") || rel == gitRel || strings.HasPrefix(rel, gitRel+"/") {
		return ""
	}
	return rel
}

// gitConfigValue finds the last value of section.key (both lower case) in
// a git configuration file: enough of git's syntax for a plain key in a
// plain section (quotes and comments, no includes, no subsections).
func gitConfigValue(data []byte, section, key string) string {
	var value, current string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			end := strings.IndexByte(line, ']')
			if end < 0 {
				current = ""
				continue
			}
			current = strings.ToLower(strings.TrimSpace(line[1:end]))
			line = strings.TrimSpace(line[end+1:])
			if line == "" {
				continue
			}
		}
		if current != section {
			continue
		}
		name, val, _ := strings.Cut(line, "=")
		if strings.ToLower(strings.TrimSpace(name)) != key {
			continue
		}
		value = gitConfigString(strings.TrimSpace(val))
	}
	return value
}

// gitConfigString reads a value: quotes removed, a comment outside quotes
// cut, backslash escapes of quotes and backslashes honoured.
func gitConfigString(v string) string {
	var b strings.Builder
	quoted := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\' && i+1 < len(v):
			i++
			b.WriteByte(v[i])
		case c == '"':
			quoted = !quoted
		case (c == '#' || c == ';') && !quoted:
			return strings.TrimSpace(b.String())
		default:
			b.WriteByte(c)
		}
	}
	return strings.TrimSpace(b.String())
}

// ProtectedNames lists, as a user names them, what rt keeps from being
// changed in every project and in ~/.claude (for doctor and the
// documentation; a plan's Protected says how it covers each here and
// now), and the protected paths rt leaves writable.
func ProtectedNames(rt *Runtime) (protected, writable []string) {
	if !rt.Protect {
		return nil, append([]string{"everything (protection is off)"}, rt.Unprotect...)
	}
	for _, p := range ProjectProtected {
		name := p.Rel
		if p.Dir {
			name += "/"
		}
		if rt.unprotected(p.Rel) || (strings.HasPrefix(p.Rel, gitRel+"/") && rt.unprotected(gitRel)) {
			continue
		}
		protected = append(protected, name)
	}
	if !rt.unprotected("~/.claude") {
		var kept []string
		for _, r := range ClaudeRecorded {
			kept = append(kept, r.Name)
		}
		protected = append(protected, "~/.claude (all but "+strings.Join(kept, ", ")+")")
	}
	return protected, rt.Unprotect
}
