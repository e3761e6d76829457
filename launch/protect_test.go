package launch_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	. "github.com/claude-sandbox/claude-sandbox/launch"
)

func protectedRuntime(t *testing.T, unprotect ...string) *Runtime {
	t.Helper()
	u, err := CleanUnprotect(unprotect)
	if err != nil {
		t.Fatal(err)
	}
	return &Runtime{Protect: true, Unprotect: u, StateDir: filepath.Join(t.TempDir(), "state")}
}

func covers(list []Protected) map[string]string {
	out := map[string]string{}
	for _, p := range list {
		out[p.Shown] = p.Cover
	}
	return out
}

// Every protected name of the project is covered: what exists by a
// read-only bind of itself, what is missing by a placeholder the start
// makes (an empty directory held, and shown as an unwritable one).
func TestProjectProtectionCoversExistingAndMissing(t *testing.T) {
	p := t.TempDir()
	os.Mkdir(filepath.Join(p, ".vscode"), 0o755)
	os.WriteFile(filepath.Join(p, ".vscode", "tasks.json"), []byte("{}"), 0o644)
	os.WriteFile(filepath.Join(p, ".envrc"), []byte("use nix\n"), 0o644)
	os.MkdirAll(filepath.Join(p, ".git", "objects"), 0o755)
	os.WriteFile(filepath.Join(p, ".git", "config"), []byte("[core]\n\thooksPath = .husky/_\n"), 0o644)
	os.MkdirAll(filepath.Join(p, ".husky", "_"), 0o755)
	mounts, prepare, list, err := ProjectProtection(p, protectedRuntime(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		".vscode": CoverReadOnly, ".envrc": CoverReadOnly, ".git/config": CoverReadOnly,
		".git/hooks": CoverReadOnly, ".husky/_": CoverReadOnly,
		".claude": CoverPlaceholder, ".mcp.json": CoverPlaceholder, ".idea": CoverPlaceholder, ".git/modules": CoverPlaceholder,
	}
	if got := covers(list); !mapsEqual(got, want) {
		t.Errorf("covers:\n got  %v\n want %v", got, want)
	}
	for _, m := range []Mount{
		{Kind: Bind, Source: filepath.Join(p, ".git"), Dest: filepath.Join(p, ".git")},
		{Kind: ROBind, Source: filepath.Join(p, ".vscode"), Dest: filepath.Join(p, ".vscode")},
		{Kind: ROBind, Source: filepath.Join(p, ".envrc"), Dest: filepath.Join(p, ".envrc")},
		{Kind: ROBind, Source: filepath.Join(p, ".husky/_"), Dest: filepath.Join(p, ".husky/_")},
		{Kind: Tmpfs, Dest: filepath.Join(p, ".mcp.json"), Mode: 0o555},
		{Kind: Tmpfs, Dest: filepath.Join(p, ".claude"), Mode: 0o555},
	} {
		if mountIndex(mounts, m) < 0 {
			t.Errorf("missing %+v", m)
		}
	}
	if mountIndex(mounts, Mount{Kind: Bind, Source: filepath.Join(p, ".git"), Dest: filepath.Join(p, ".git")}) != 0 {
		t.Error(".git must be bound before what covers the paths inside it")
	}
	placeholders := map[string]bool{}
	for _, d := range prepare {
		if d.Placeholder {
			placeholders[filepath.Base(d.Path)] = true
		}
	}
	for _, name := range []string{".claude", ".mcp.json", ".idea", "modules"} {
		if !placeholders[name] {
			t.Errorf("no placeholder for %s: %+v", name, prepare)
		}
	}
	// Deciding wrote nothing.
	for _, name := range []string{".claude", ".mcp.json", ".idea", ".git/hooks", ".git/modules"} {
		if _, err := os.Lstat(filepath.Join(p, name)); err == nil {
			t.Errorf("planning made %s", name)
		}
	}
}

// Unprotecting: a name leaves it alone, .git leaves git's paths alone (as
// --protect-git=false did), a path under a protected directory is bound
// read-write inside it, and --protect=false covers nothing.
func TestUnprotect(t *testing.T) {
	p := t.TempDir()
	os.Mkdir(filepath.Join(p, ".git"), 0o755)
	os.WriteFile(filepath.Join(p, ".git", "config"), nil, 0o644)
	os.Mkdir(filepath.Join(p, ".claude"), 0o755)
	_, _, list, _ := ProjectProtection(p, protectedRuntime(t, ".vscode", ".git"), nil)
	got := covers(list)
	for _, name := range []string{".vscode", ".git/config", ".git/hooks"} {
		if _, ok := got[name]; ok {
			t.Errorf("%s unprotected but covered", name)
		}
	}
	if got[".idea"] == "" {
		t.Error(".idea lost its cover with .vscode unprotected")
	}
	mounts, prepare, _, _ := ProjectProtection(p, protectedRuntime(t, ".claude/worktrees"), nil)
	worktrees := filepath.Join(p, ".claude", "worktrees")
	ro := mountIndex(mounts, Mount{Kind: ROBind, Source: filepath.Join(p, ".claude"), Dest: filepath.Join(p, ".claude")})
	rw := mountIndex(mounts, Mount{Kind: Bind, Source: worktrees, Dest: worktrees})
	if ro < 0 || rw < ro {
		t.Errorf(".claude read-only, then .claude/worktrees read-write: %+v", mounts)
	}
	if !slices.ContainsFunc(prepare, func(d HostDir) bool { return d.Path == worktrees && !d.Placeholder }) {
		t.Errorf("the unprotected directory is not made for good: %+v", prepare)
	}
	if m, d, l, _ := ProjectProtection(p, &Runtime{Protect: false}, nil); m != nil || d != nil || l != nil {
		t.Error("--protect=false still covers something")
	}
}

// A symbolic link at a protected name cannot be protected: a mount would
// cover what it points to, and the name could still be replaced.
func TestProtectedSymlinkIsRefused(t *testing.T) {
	p := t.TempDir()
	os.Symlink(t.TempDir(), filepath.Join(p, ".vscode"))
	_, _, _, err := ProjectProtection(p, protectedRuntime(t), nil)
	var pe *ProtectionError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), ".vscode") {
		t.Fatalf("got %v", err)
	}
	if _, _, _, err := ProjectProtection(p, protectedRuntime(t, ".vscode"), nil); err != nil {
		t.Errorf("unprotected, the link is the user's business: %v", err)
	}
}

func TestCleanUnprotect(t *testing.T) {
	got, err := CleanUnprotect([]string{"./.vscode/", ".git", "~/.claude/settings.json", ".claude/worktrees", ".vscode", "~/.claude"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{".claude/worktrees", ".git", ".vscode", "~/.claude", "~/.claude/settings.json"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"", "src", "../x/.vscode", "/abs/.vscode", "~/.bashrc", "~/.claude/commands/x", ".git/objects"} {
		if _, err := CleanUnprotect([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// ~/.claude inside is the sandbox's own: the recorded entries bound
// read-write from the host (made there when missing), settings.json bound
// read-only, everything else of the host's linked to its read-only view,
// and Claude Code's per-session state left out.
func TestClaudeHome(t *testing.T) {
	home := t.TempDir()
	claude := filepath.Join(home, ".claude")
	for _, d := range []string{"projects", "commands", "shell-snapshots", "todos", "plugins"} {
		os.MkdirAll(filepath.Join(claude, d), 0o755)
	}
	for _, f := range []string{"settings.json", "CLAUDE.md", "statusline.sh", "history.jsonl.lock"} {
		os.WriteFile(filepath.Join(claude, f), []byte("x"), 0o644)
	}
	os.WriteFile(filepath.Join(claude, ".config.json"), []byte("{}"), 0o600)
	rt := protectedRuntime(t)
	mounts, prepare, list := ClaudeHome(UserFiles{Home: home, MayCreate: true}, rt)
	in := func(name string) string { return filepath.Join(claude, name) }
	view := func(name string) string { return filepath.Join(ClaudeHostView, name) }
	for _, m := range []Mount{
		{Kind: Dir, Dest: claude, Mode: 0o700},
		{Kind: ROBind, Source: claude, Dest: ClaudeHostView},
		{Kind: Bind, Source: in("projects"), Dest: in("projects")},
		{Kind: Bind, Source: in("history.jsonl"), Dest: in("history.jsonl")},
		{Kind: Bind, Source: in(".credentials.json"), Dest: in(".credentials.json")},
		{Kind: ROBind, Source: in("settings.json"), Dest: in("settings.json")},
		{Kind: Symlink, Source: view("CLAUDE.md"), Dest: in("CLAUDE.md")},
		{Kind: Symlink, Source: view("commands"), Dest: in("commands")},
		{Kind: Symlink, Source: view("statusline.sh"), Dest: in("statusline.sh")},
		{Kind: File, Source: in(".config.json"), Dest: in(".config.json"), Mode: 0o600, Secret: true, Optional: true},
		// What the host lacks cannot be made inside: an unwritable mount point.
		{Kind: Tmpfs, Dest: in("agents"), Mode: 0o555},
		{Kind: Tmpfs, Dest: in("settings.local.json"), Mode: 0o555},
	} {
		if mountIndex(mounts, m) < 0 {
			t.Errorf("missing %+v", m)
		}
	}
	if mountIndex(mounts, Mount{Kind: Dir, Dest: claude, Mode: 0o700}) != 0 {
		t.Error("~/.claude must be made before what goes in it")
	}
	for _, m := range mounts {
		for _, left := range []string{"shell-snapshots", "todos", "history.jsonl.lock"} {
			if m.Dest == in(left) {
				t.Errorf("the host's per-session %s is shown: %+v", left, m)
			}
		}
	}
	var files []string
	for _, d := range prepare {
		if d.File {
			files = append(files, filepath.Base(d.Path))
		}
	}
	if !slices.Equal(files, []string{"history.jsonl", ".credentials.json"}) {
		t.Errorf("the start makes %q, want history.jsonl and .credentials.json", files)
	}
	got := covers(list)
	for name, cover := range map[string]string{"~/.claude/settings.json": CoverReadOnly, "~/.claude/commands": CoverLinked,
		"~/.claude/plugins": CoverLinked, "~/.claude/agents": CoverAbsent, "~/.claude/settings.local.json": CoverAbsent,
		"~/.claude/CLAUDE.md": CoverLinked} {
		if got[name] != cover {
			t.Errorf("%s: %q, want %q", name, got[name], cover)
		}
	}

	// Unprotected: an entry is the host's again, read-write; ~/.claude
	// as a whole is bound as before protection.
	mounts, _, _ = ClaudeHome(UserFiles{Home: home, MayCreate: true}, protectedRuntime(t, "~/.claude/commands"))
	if mountIndex(mounts, Mount{Kind: Bind, Source: in("commands"), Dest: in("commands")}) < 0 {
		t.Errorf("~/.claude/commands not bound read-write: %+v", mounts)
	}
	mounts, _, _ = ClaudeHome(UserFiles{Home: home, MayCreate: true}, protectedRuntime(t, "~/.claude"))
	if !reflect.DeepEqual(mounts, []Mount{{Kind: Bind, Source: claude, Dest: claude}}) {
		t.Errorf("~/.claude unprotected: %+v", mounts)
	}
}

// No ~/.claude on the host: the start makes it and what is recorded in
// it; without the right to make it, the sandbox's is its own only.
func TestClaudeHomeMissing(t *testing.T) {
	home := t.TempDir()
	claude := filepath.Join(home, ".claude")
	mounts, prepare, _ := ClaudeHome(UserFiles{Home: home, MayCreate: true}, protectedRuntime(t))
	if len(prepare) == 0 || prepare[0].Path != claude || prepare[0].File {
		t.Errorf("~/.claude is not made first: %+v", prepare)
	}
	if mountIndex(mounts, Mount{Kind: Bind, Source: filepath.Join(claude, "projects"), Dest: filepath.Join(claude, "projects")}) < 0 {
		t.Errorf("projects/ not bound: %+v", mounts)
	}
	mounts, prepare, _ = ClaudeHome(UserFiles{Home: home}, protectedRuntime(t))
	if len(prepare) != 0 || len(mounts) != 1+len(ClaudeObeyed) || mountIndex(mounts, Mount{Kind: Dir, Dest: claude, Mode: 0o700}) != 0 ||
		mountIndex(mounts, Mount{Kind: Tmpfs, Dest: filepath.Join(claude, "settings.json"), Mode: 0o555}) < 0 {
		t.Errorf("without a ~/.claude to make, the sandbox's own, its obeyed names held: %+v %+v", mounts, prepare)
	}
}

// The start makes the placeholders and holds them; giving them up removes
// them (no other sandbox holds them), and the host is as before.
func TestPrepareHostMakesAndReleasesPlaceholders(t *testing.T) {
	p := t.TempDir()
	rt := protectedRuntime(t)
	os.MkdirAll(rt.StateDir, 0o700)
	_, prepare, _, err := ProjectProtection(p, rt, nil)
	if err != nil {
		t.Fatal(err)
	}
	plan := &Plan{StateDir: rt.StateDir, Prepare: prepare}
	if err := PrepareHost(plan); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{".claude", ".mcp.json", ".envrc", ".vscode", ".idea"} {
		if st, err := os.Lstat(filepath.Join(p, name)); err != nil || !st.IsDir() {
			t.Errorf("no placeholder %s", name)
		}
	}
	// A second plan while the first sandbox runs takes them as its own
	// placeholders too (they are recorded).
	_, again, _, _ := ProjectProtection(p, rt, nil)
	if n := slices.IndexFunc(again, func(d HostDir) bool { return !d.Placeholder }); n >= 0 {
		t.Errorf("a recorded placeholder planned as the user's: %+v", again[n])
	}
	plan.ReleasePlaceholders()
	if entries, _ := os.ReadDir(p); len(entries) != 0 {
		t.Errorf("left on the host: %v", entries)
	}
}

func TestProtectionNotice(t *testing.T) {
	n := ProtectionNotice(protectedRuntime(t, ".vscode"))
	for _, want := range []string{".claude/", ".mcp.json", ".envrc", ".idea/", ".git/hooks/", "~/.claude", "projects", "ask the user"} {
		if !strings.Contains(n, want) {
			t.Errorf("the notice does not mention %q: %s", want, n)
		}
	}
	if strings.Contains(n, ".vscode") {
		t.Errorf("an unprotected path is said to be read-only: %s", n)
	}
	if ProtectionNotice(&Runtime{}) != "" {
		t.Error("a notice with protection off")
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// BenchmarkProtection is what protection adds to a launch in Go, for a
// project without any protected path and a home with a small ~/.claude:
// planning both, making and holding the five placeholders, and giving
// them up (the supervisor's part). The mounts' own cost is bwrap's and is
// measured by tests/bench_test.go's BenchmarkLaunch.
//
//	go test ./launch -run '^$' -bench Protection
func BenchmarkProtection(b *testing.B) {
	home := b.TempDir()
	os.MkdirAll(filepath.Join(home, ".claude", "projects"), 0o700)
	os.WriteFile(filepath.Join(home, ".claude", "settings.json"), []byte("{}"), 0o644)
	state := filepath.Join(b.TempDir(), "state")
	os.MkdirAll(state, 0o700)
	rt := &Runtime{Protect: true, StateDir: state}
	p := b.TempDir()
	for i := 0; i < b.N; i++ {
		ClaudeHome(UserFiles{Home: home}, rt)
		_, prepare, _, err := ProjectProtection(p, rt, nil)
		if err != nil {
			b.Fatal(err)
		}
		plan := &Plan{StateDir: state, Prepare: prepare}
		if err := PrepareHost(plan); err != nil {
			b.Fatal(err)
		}
		plan.ReleasePlaceholders()
	}
}
