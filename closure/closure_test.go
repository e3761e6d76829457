package closure

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestClosestSuggestsNearNames(t *testing.T) {
	names := []string{"python3", "python311", "python3Packages", "nodejs", "ripgrep", "git"}
	if got := closest("pyhton3", names, 3); len(got) == 0 || got[0] != "python3" {
		t.Fatalf("closest(pyhton3) = %v", got)
	}
	if got := closest("ripgrpe", names, 3); !slices.Contains(got, "ripgrep") {
		t.Fatalf("closest(ripgrpe) = %v", got)
	}
	if got := closest("zzzzzzzz", names, 3); len(got) != 0 {
		t.Fatalf("closest(zzzzzzzz) = %v, want nothing", got)
	}
}

func TestLastError(t *testing.T) {
	tail := []string{"building...", "error: first", "       … while evaluating", "error: the real one", ""}
	if got := lastError(tail); got != "the real one" {
		t.Fatalf("lastError = %q", got)
	}
}

func TestMarkerPayload(t *testing.T) {
	tail := []string{"error: claude-sandbox:unknown-packages:[[\"pyhton3\"],[\"a\",\"b\"]]"}
	got, ok := markerPayload(tail, unknownMarker)
	if !ok || len(got) != 2 || got[1][1] != "b" {
		t.Fatalf("markerPayload = %v %v", got, ok)
	}
}

// A damaged index entry reads as a miss, never as an error or a hit.
func TestDamagedEntriesAreMisses(t *testing.T) {
	dirs := Dirs{Cache: t.TempDir(), State: t.TempDir()}
	key := "k"
	for name, content := range map[string]string{
		"empty":     "",
		"truncated": `{"schema":1,"key":"k","outPa`,
		"other key": `{"schema":1,"key":"other","outPath":"/nix/store/x"}`,
		"not store": `{"schema":1,"key":"k","outPath":"/etc"}`,
		"gone":      `{"schema":1,"key":"k","outPath":"/nix/store/00000000000000000000000000000000-gone"}`,
	} {
		os.MkdirAll(dirs.index(), 0o755)
		os.WriteFile(dirs.entryFile(key), []byte(content), 0o644)
		if e, err := readEntry(dirs, key); err == nil {
			t.Errorf("%s: read as a hit: %+v", name, e)
		}
	}
}

func TestChooseNixpkgsPrecedence(t *testing.T) {
	// A flake build links a pin in; this test sets its own.
	pinned := CompiledNixpkgs
	CompiledNixpkgs = ""
	defer func() { CompiledNixpkgs = pinned }()
	env := map[string]string{"CLAUDE_SANDBOX_NIXPKGS": "/from/env", "NIX_PATH": "nixpkgs=/from/nixpath"}
	get := func(k string) string { return env[k] }
	if c := ChooseNixpkgs("/flag", get); c.Ref != "/flag" {
		t.Errorf("flag lost: %+v", c)
	}
	if c := ChooseNixpkgs("", get); c.Ref != "/from/env" {
		t.Errorf("env lost: %+v", c)
	}
	CompiledNixpkgs = "/nix/store/pinned"
	delete(env, "CLAUDE_SANDBOX_NIXPKGS")
	if c := ChooseNixpkgs("", get); c.Ref != "/nix/store/pinned" {
		t.Errorf("compiled-in lost: %+v", c)
	}
	CompiledNixpkgs = ""
	if c := ChooseNixpkgs("", get); c.Ref != "/from/nixpath" {
		t.Errorf("NIX_PATH lost: %+v", c)
	}
	delete(env, "NIX_PATH")
	if c := ChooseNixpkgs("", get); c.Ref != "flake:nixpkgs" {
		t.Errorf("registry fallback lost: %+v", c)
	}
}

func TestResolvePathIdentityFollowsContent(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "default.nix"), []byte("{}: {}"), 0o644)
	a, err := resolvePath(dir)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "default.nix"), []byte("{ ... }: { x = 1; }"), 0o644)
	b, _ := resolvePath(dir)
	if a.Identity == b.Identity {
		t.Fatal("editing a local nixpkgs kept its identity: the old closure would be reused")
	}
	if _, err := resolvePath(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing nixpkgs accepted")
	}
}

// fakeGitCheckout makes root a git checkout whose index claims entries
// tracked files, on branch main at commit, without running git.
func fakeGitCheckout(t *testing.T, root string, entries uint32, commit string) {
	t.Helper()
	gitDir := filepath.Join(root, ".git")
	os.MkdirAll(filepath.Join(gitDir, "refs", "heads"), 0o755)
	header := []byte{'D', 'I', 'R', 'C', 0, 0, 0, 2, byte(entries >> 24), byte(entries >> 16), byte(entries >> 8), byte(entries)}
	os.WriteFile(filepath.Join(gitDir, "index"), header, 0o644)
	os.WriteFile(filepath.Join(gitDir, "HEAD"), []byte("ref: refs/heads/main\n"), 0o644)
	os.WriteFile(filepath.Join(gitDir, "refs", "heads", "main"), []byte(commit+"\n"), 0o644)
}

func TestResolvePathLargeCheckoutIsItsCommit(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "default.nix"), []byte("{}: {}"), 0o644)
	fakeGitCheckout(t, dir, 45000, "1111111111111111111111111111111111111111")
	a, _ := resolvePath(dir)
	if !strings.Contains(a.Identity, "git:1111111111111111111111111111111111111111") {
		t.Fatalf("a checkout of 45,000 files is not identified by its commit: %s", a.Identity)
	}
	os.WriteFile(filepath.Join(dir, "default.nix"), []byte("{ ... }: { x = 1; }"), 0o644)
	if b, _ := resolvePath(dir); b.Identity != a.Identity {
		t.Fatal("an uncommitted edit to a large checkout changed its identity, so every launch would walk it")
	}
	os.WriteFile(filepath.Join(dir, ".git", "refs", "heads", "main"), []byte("2222222222222222222222222222222222222222\n"), 0o644)
	if c, _ := resolvePath(dir); c.Identity == a.Identity {
		t.Fatal("a new commit kept the identity: the old closure would be reused")
	}
}

func TestGitHeadFollowsPackedRefsAndWorktrees(t *testing.T) {
	main := t.TempDir()
	fakeGitCheckout(t, main, 10, "")
	os.Remove(filepath.Join(main, ".git", "refs", "heads", "main"))
	os.WriteFile(filepath.Join(main, ".git", "packed-refs"),
		[]byte("# pack-refs with: peeled fully-peeled sorted\n3333333333333333333333333333333333333333 refs/heads/main\n"), 0o644)
	if got := findGitRepo(filepath.Join(main, "sub")).head(); got != "3333333333333333333333333333333333333333" {
		t.Errorf("packed ref: head = %q", got)
	}

	// A linked worktree: .git is a file, HEAD is its own, refs are shared.
	wt := t.TempDir()
	wtGit := filepath.Join(main, ".git", "worktrees", "wt")
	os.MkdirAll(wtGit, 0o755)
	os.WriteFile(filepath.Join(wtGit, "HEAD"), []byte("ref: refs/heads/main\n"), 0o644)
	os.WriteFile(filepath.Join(wtGit, "commondir"), []byte("../..\n"), 0o644)
	os.WriteFile(filepath.Join(wt, ".git"), []byte("gitdir: "+wtGit+"\n"), 0o644)
	if got := findGitRepo(wt).head(); got != "3333333333333333333333333333333333333333" {
		t.Errorf("worktree: head = %q", got)
	}
}
