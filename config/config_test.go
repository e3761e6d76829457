package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func parse(t *testing.T, dir, text string) *File {
	t.Helper()
	f, err := Parse(filepath.Join(dir, "claude-sandbox.toml"), []byte(text))
	if err != nil {
		t.Fatalf("Parse(%q): %v", text, err)
	}
	return f
}

func parseErr(t *testing.T, text string) *FileError {
	t.Helper()
	_, err := Parse("/p/claude-sandbox.toml", []byte(text))
	var fe *FileError
	if !errors.As(err, &fe) {
		t.Fatalf("Parse(%q) = %v, want a *FileError", text, err)
	}
	return fe
}

func TestParseSettings(t *testing.T) {
	f := parse(t, "/p", `
backend = "container"
with = ["python3", "python3Packages.numpy"]
network = false
modules = ["./sandbox.nix", "/abs/m.nix"]
nixpkgs = "../nixpkgs"
env = ["OPENAI_API_KEY"]
`)
	if s, _ := f.Get("backend"); s.Str != "container" || s.Line != 2 {
		t.Errorf("backend = %+v", s)
	}
	if s, _ := f.Get("with"); len(s.List) != 2 || s.List[1] != "python3Packages.numpy" {
		t.Errorf("with = %+v", s)
	}
	if s, ok := f.Get("network"); !ok || s.Bool {
		t.Errorf("network = %+v", s)
	}
	if s, _ := f.Get("modules"); s.List[0] != "/p/sandbox.nix" || s.List[1] != "/abs/m.nix" {
		t.Errorf("modules are not resolved against the file's directory: %v", s.List)
	}
	if s, _ := f.Get("nixpkgs"); s.Str != "/nixpkgs" {
		t.Errorf("nixpkgs = %q, want /nixpkgs", s.Str)
	}
	if _, ok := f.Get("tmux"); ok {
		t.Error("tmux is not set but Get found it")
	}
	g := parse(t, "/p", `nixpkgs = "github:NixOS/nixpkgs/nixos-unstable"`)
	if s, _ := g.Get("nixpkgs"); s.Str != "github:NixOS/nixpkgs/nixos-unstable" {
		t.Errorf("a flake reference was changed: %q", s.Str)
	}
}

func TestParseErrorsSayWhere(t *testing.T) {
	cases := []struct {
		text, want string
		line       int
	}{
		{"with = [\"jq\"]\nnetwrok = false\n", `unknown key "netwrok"`, 2},
		{"network = \"no\"\n", `"no" is not one of allowlist, none, open, learn`, 1},
		{"network = 3\n", `"3" is not one of`, 1},
		{"with = \"python3\"\n", "string", 1},
		{"\n\nbackend = \"docker\"\n", `"docker" is not one of bubblewrap, container, vm`, 3},
		{"with = [\"ok\", \"${builtins.exec}\"]\n", "not a Nix identifier", 1},
		{"env = [\"A=B\"]\n", "not an environment variable name", 1},
		{"[table]\nx = 1\n", `unknown key "table`, 1},
		{"with = [\n", "", 0},
	}
	for _, c := range cases {
		fe := parseErr(t, c.text)
		if !strings.Contains(fe.Error(), c.want) {
			t.Errorf("%q: %q does not say %q", c.text, fe.Error(), c.want)
		}
		if c.line > 0 && fe.Line != c.line {
			t.Errorf("%q: line %d, want %d (%s)", c.text, fe.Line, c.line, fe.Error())
		}
		if fe.Hint() == "" {
			t.Errorf("%q: no hint", c.text)
		}
	}
}

func TestLoadProjectTwoFilesIsAnError(t *testing.T) {
	dir := t.TempDir()
	if f, err := LoadProject(dir); f != nil || err != nil {
		t.Fatalf("empty dir: %v, %v", f, err)
	}
	os.WriteFile(filepath.Join(dir, ".claude-sandbox.toml"), []byte("with = [\"jq\"]\n"), 0o644)
	if f, err := LoadProject(dir); err != nil || f == nil || filepath.Base(f.Path) != ".claude-sandbox.toml" {
		t.Fatalf("hidden file: %v, %v", f, err)
	}
	os.WriteFile(filepath.Join(dir, "claude-sandbox.toml"), []byte("with = [\"jq\"]\n"), 0o644)
	if _, err := LoadProject(dir); err == nil {
		t.Fatal("two project files: no error")
	}
}

func TestUserPathHonoursXDG(t *testing.T) {
	env := map[string]string{"HOME": "/home/u", "XDG_CONFIG_HOME": "/cfg"}
	if got := UserPath(func(k string) string { return env[k] }); got != "/cfg/claude-sandbox/config.toml" {
		t.Errorf("UserPath = %q", got)
	}
	env["XDG_CONFIG_HOME"] = "relative" // the spec says: ignore a relative one
	if got := UserPath(func(k string) string { return env[k] }); got != "/home/u/.config/claude-sandbox/config.toml" {
		t.Errorf("UserPath = %q", got)
	}
}

var builtin = Defaults(func(key string) (bool, bool) {
	switch key {
	case "network", "nix-daemon", "desktop", "protect", "protect-git":
		return true, true
	case "gh-token", "sudo", "tmux":
		return false, true
	}
	return false, false
})

func widened(ws []Widening) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Setting.Key.Name)
	}
	return out
}

func TestWidenings(t *testing.T) {
	cases := []struct {
		project, user string
		want          string
	}{
		// Adding packages and narrowing never need approval.
		{`with = ["python3"]`, ``, ``},
		{"network = false\nnix-daemon = false\ndesktop = false\nprotect-git = true\ntmux = true", ``, ``},
		{`backend = "vm"` + "\n" + `accel = "tcg"`, ``, ``},
		// Widening does.
		{`env = ["AWS_SECRET_ACCESS_KEY"]`, ``, `env`},
		{`gh-token = true`, ``, `gh-token`},
		{`modules = ["./m.nix"]`, ``, `modules`},
		{`nixpkgs = "github:evil/nixpkgs"`, ``, `nixpkgs`},
		{`protect-git = false`, ``, `protect-git`},
		{`protect = false`, ``, `protect`},
		{`protect = true`, ``, ``},
		{`unprotect = [".vscode"]`, ``, `unprotect`},
		{`unprotect = [".vscode"]`, `unprotect = [".vscode", ".idea"]`, ``},
		{`sudo = true`, ``, `sudo`},
		// The network is an allowlist unless someone opens it: opening it
		// (open, learn, or the older network = true) is a widening, unless
		// the user opened it too; closing it never is.
		{`network = true`, ``, `network`},
		{`network = "open"`, ``, `network`},
		{`network = "learn"`, ``, `network`},
		{`network = "allowlist"`, ``, ``},
		{`network = "none"`, ``, ``},
		{`network = "open"`, `network = "open"`, ``},
		{`network = "allowlist"`, `network = false`, `network`},
		// Allowing a destination widens, unless the user allows it too;
		// denying never does.
		{`allow = ["pypi.org", "files.pythonhosted.org"]`, ``, `allow`},
		{`allow = ["pypi.org"]`, `allow = ["pypi.org"]`, ``},
		{`deny = ["*.example.com"]`, ``, ``},
		{`desktop = true`, `desktop = false`, `desktop`},
		{`gh-token = true`, `gh-token = true`, ``},
		// What the user already allows is not a widening.
		{`env = ["A", "B"]`, `env = ["A"]`, `env`},
		{`env = ["A"]`, `env = ["A"]`, ``},
		{`nixpkgs = "/n"`, `nixpkgs = "/n"`, ``},
	}
	for _, c := range cases {
		project := parse(t, "/p", c.project)
		var user *File
		if c.user != "" {
			user = parse(t, "/home/u/.config/claude-sandbox", c.user)
		}
		got := strings.Join(widened(Widenings(project, user, builtin)), ",")
		if got != c.want {
			t.Errorf("project %q, user %q: widens %q, want %q", c.project, c.user, got, c.want)
		}
	}
	ws := Widenings(parse(t, "/p", `env = ["A", "B"]`), parse(t, "/u", `env = ["A"]`), builtin)
	if !strings.HasSuffix(ws[0].Why, ": B") {
		t.Errorf("the reason should name only the new variable: %q", ws[0].Why)
	}
}

func writeProject(t *testing.T, dir, text string) *File {
	t.Helper()
	p := filepath.Join(dir, "claude-sandbox.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestTrustStore(t *testing.T) {
	dir := t.TempDir()
	store := TrustStore{Dir: filepath.Join(t.TempDir(), "trust")}
	os.WriteFile(filepath.Join(dir, "m.nix"), []byte("{ ... }: { }\n"), 0o644)
	f := writeProject(t, dir, "env = [\"SECRET\"]\nmodules = [\"./m.nix\"]\n")

	st := store.Check(f, nil, builtin)
	if st.Effective() || st.Approval != nil || st.Earlier != nil {
		t.Fatalf("never approved, but: %+v", st)
	}
	if _, err := store.Approve(f); err != nil {
		t.Fatal(err)
	}
	if st := store.Check(f, nil, builtin); !st.Effective() || st.Approval == nil {
		t.Fatalf("approved, but: %s", st.Describe())
	}

	// A changed file needs approval again, and says it changed.
	g := writeProject(t, dir, "env = [\"SECRET\", \"OTHER\"]\nmodules = [\"./m.nix\"]\n")
	st = store.Check(g, nil, builtin)
	if st.Effective() || st.Earlier == nil || !strings.Contains(st.Describe(), "changed since") {
		t.Fatalf("edited file: %s", st.Describe())
	}
	err := &UntrustedError{Status: st, Project: dir}
	if !strings.Contains(err.Error(), "changed since") || !strings.Contains(err.Hint(), "trust --show") {
		t.Errorf("error %q / hint %q", err.Error(), err.Hint())
	}

	// So does a changed module file: the approval covers its code.
	f = writeProject(t, dir, "env = [\"SECRET\"]\nmodules = [\"./m.nix\"]\n")
	if !store.Check(f, nil, builtin).Effective() {
		t.Fatal("the approved content again is not trusted")
	}
	os.WriteFile(filepath.Join(dir, "m.nix"), []byte("{ ... }: { users.users.root.password = \"x\"; }\n"), 0o644)
	if store.Check(f, nil, builtin).Effective() {
		t.Fatal("a changed module file is still trusted")
	}

	// The same text elsewhere is another file.
	other := writeProject(t, t.TempDir(), "env = [\"SECRET\"]\nmodules = [\"./m.nix\"]\n")
	if store.Check(other, nil, builtin).Approval != nil {
		t.Fatal("an approval moved to another path")
	}

	if n, err := store.Revoke(f.Path); err != nil || n != 1 {
		t.Fatalf("Revoke = %d, %v", n, err)
	}
	if all, _ := store.List(); len(all) != 0 {
		t.Fatalf("after revoke: %v", all)
	}
}

func TestNarrowingFileNeedsNoApproval(t *testing.T) {
	f := writeProject(t, t.TempDir(), "with = [\"jq\"]\nnetwork = false\n")
	st := TrustStore{Dir: t.TempDir()}.Check(f, nil, builtin)
	if !st.Effective() || len(st.Widenings) != 0 || !strings.Contains(st.Describe(), "needs no approval") {
		t.Fatalf("%s", st.Describe())
	}
}

// unprotect names paths in the project or in ~/.claude, nothing else.
func TestUnprotectPaths(t *testing.T) {
	for _, good := range []string{`[".vscode"]`, `[".claude/worktrees", "~/.claude/settings.json", "~/.claude"]`} {
		if _, err := Parse("/p/claude-sandbox.toml", []byte("unprotect = "+good)); err != nil {
			t.Errorf("%s: %v", good, err)
		}
	}
	for _, bad := range []string{`["/etc"]`, `["../x"]`, `["~/.ssh"]`, `[""]`, `["."]`} {
		_, err := Parse("/p/claude-sandbox.toml", []byte("unprotect = "+bad))
		var fe *FileError
		if !errors.As(err, &fe) || fe.Line != 1 {
			t.Errorf("%s: %v", bad, err)
		}
	}
}
