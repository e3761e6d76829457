package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// fakeHome is a host home directory with the files the sandbox forwards
// and secrets it must not.
func fakeHome(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp(workDir, "home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	files := map[string]string{
		".gitconfig":              "[user]\n\tname = Probe\n",
		".config/git/ignore":      "*.probe\n",
		".config/gh/hosts.yml":    "github.com:\n  user: probe\n",
		".ssh/config":             "Host probe\n",
		".claude.json":            `{"userID":"probe-user","hasCompletedOnboarding":true}`,
		".claude/settings.json":   `{}`,
		".aws/credentials":        "PLANTED-AWS-SECRET\n",
		".netrc":                  "machine x login y password PLANTED-NETRC-SECRET\n",
		".docker/config.json":     `{"auths":{"x":{"auth":"PLANTED-DOCKER-SECRET"}}}`,
		".bash_history":           "export TOKEN=PLANTED-HISTORY-SECRET\n",
		".config/other/token":     "PLANTED-CONFIG-SECRET\n",
		".local/share/keyrings/x": "PLANTED-KEYRING-SECRET\n",
	}
	for rel, content := range files {
		p := filepath.Join(d, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(d, ".ssh"), 0o700)
	return d
}

// The home directory: forwarded files read-only, what Claude Code records
// in ~/.claude read-write (its configuration is protected: protect_test.go),
// ~/.claude.json a private copy, every other file of the host home absent.
func TestBwrapHomeForwardingAndSecrets(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	home := fakeHome(t)
	o := runOpts{env: []string{"HOME=" + home}}
	r := sh(t, o, p, `
cd "$HOME"
for f in .aws/credentials .netrc .docker/config.json .bash_history .config/other/token .local/share/keyrings/x; do
  cat "$f" 2>/dev/null && echo "READABLE $f"
done
grep -h . .gitconfig .config/git/ignore .config/gh/hosts.yml .ssh/config
for f in .gitconfig .config/git/ignore .config/gh/hosts.yml .ssh/config; do
  (echo x >> "$f") 2>/dev/null && echo "WRITABLE $f"
done
# ~/.ssh is the sandbox's own directory holding the visible files
# read-only: what is written beside them stays in the sandbox.
echo x > .ssh/new 2>/dev/null
cat .claude.json; echo
echo "whoami=$(id -un) uid=$(id -u) home=$(awk -F: -v u="$(id -u)" '$3 == u { print $6 }' /etc/passwd)"
grep -c . /etc/passwd
echo written-inside > .claude/projects/from-sandbox
# Claude Code replaces ~/.claude.json by rename: that must work inside.
echo '{"changed":"inside"}' > .claude.json.tmp && mv .claude.json.tmp .claude.json && echo RENAME-OK
`)
	if r.code != 0 {
		t.Fatalf("probe failed: %s", r)
	}
	if strings.Contains(r.stdout, "READABLE") || strings.Contains(r.stdout, "PLANTED") {
		t.Errorf("a host secret is readable inside:\n%s", r.stdout)
	}
	for _, want := range []string{"name = Probe", "*.probe", "user: probe", "Host probe", `"userID":"probe-user"`, "RENAME-OK"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("missing %q inside:\n%s", want, r)
		}
	}
	if strings.Contains(r.stdout, "WRITABLE") {
		t.Errorf("a read-only forwarded file is writable:\n%s", r.stdout)
	}
	// ssh and git need getpwuid(); the sandbox's passwd names the user, and
	// only root, the user and nobody.
	if want := fmt.Sprintf("whoami=%s uid=%d home=%s", os.Getenv("USER"), os.Getuid(), home); os.Getuid() != 0 && !strings.Contains(r.stdout, want) {
		t.Errorf("identity inside: want %q:\n%s", want, r.stdout)
	}
	if _, err := os.Stat(filepath.Join(home, ".ssh", "new")); err == nil {
		t.Error("a file written in ~/.ssh inside reached the host")
	}
	if got, _ := os.ReadFile(filepath.Join(home, ".claude", "projects", "from-sandbox")); string(got) != "written-inside\n" {
		t.Errorf("~/.claude/projects is not read-write: %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(home, ".claude.json")); !strings.Contains(string(got), "probe-user") {
		t.Errorf("the sandbox changed the host's ~/.claude.json: %q", got)
	}
}

// Writes to every read-only mount fail, and leave the host untouched.
func TestBwrapReadOnlyMountsRefuseWrites(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	home := fakeHome(t)
	b := buildJSON(t, runOpts{})
	targets := []string{
		"/nix/store/claude-sandbox-probe", b.OutPath + "/share/claude-sandbox/manifest.json",
		"/etc/hosts", "/etc/chromium/policies/managed/probe.json",
		"/lib64/ld-linux-x86-64.so.2", "/bin/sh",
		home + "/.gitconfig", home + "/.ssh/config", home + "/.config/git/probe", home + "/.config/gh/probe",
	}
	script := ""
	for _, f := range targets {
		script += fmt.Sprintf("(echo x >> '%s') 2>/dev/null && echo 'WRITABLE %s'\n", f, f)
	}
	r := sh(t, runOpts{env: []string{"HOME=" + home}}, p, script+"true")
	if r.code != 0 || strings.Contains(r.stdout, "WRITABLE") {
		t.Fatalf("read-only mounts: %s", r)
	}
	if _, err := os.Stat("/nix/store/claude-sandbox-probe"); err == nil {
		t.Error("the sandbox created a file in the host store")
	}
}

// --protect-git (the default): .git/config and .git/hooks read-only, .git
// impossible to move aside or delete; commits still work.
func TestBwrapProtectGit(t *testing.T) {
	requireSandboxHost(t)
	testenv.RequireProgram(t, "git")
	p := project(t)
	for _, args := range [][]string{{"init", "-q"}, {"config", "user.email", "p@example.com"}, {"config", "user.name", "P"}} {
		if out, err := exec.Command("git", append([]string{"-C", p}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	config, _ := os.ReadFile(filepath.Join(p, ".git", "config"))
	probe := `
(echo '[core]' >> .git/config; echo '	fsmonitor = evil' >> .git/config) 2>/dev/null && echo CONFIG-WRITABLE
(printf '#!/bin/sh\necho pwned\n' > .git/hooks/pre-commit) 2>/dev/null && echo HOOK-WRITABLE
mv .git .git-aside 2>/dev/null && echo GIT-MOVED
rmdir .git/hooks 2>/dev/null; test -d .git/hooks || echo HOOKS-REMOVED
git config core.hooksPath /tmp 2>/dev/null && echo GIT-CONFIG-WORKS
echo x > f && git add f && git commit -qm inside && echo COMMIT-OK
`
	r := sh(t, runOpts{}, p, probe)
	for _, bad := range []string{"CONFIG-WRITABLE", "HOOK-WRITABLE", "GIT-MOVED", "HOOKS-REMOVED", "GIT-CONFIG-WORKS"} {
		if strings.Contains(r.stdout, bad) {
			t.Errorf("--protect-git: %s\n%s", bad, r)
		}
	}
	if !strings.Contains(r.stdout, "COMMIT-OK") {
		t.Errorf("a commit inside failed with --protect-git: %s", r)
	}
	if got, _ := os.ReadFile(filepath.Join(p, ".git", "config")); string(got) != string(config) {
		t.Errorf(".git/config changed on the host:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(p, ".git", "hooks", "pre-commit")); err == nil {
		t.Error("a hook was planted on the host")
	}

	r = sh(t, runOpts{}, p, `git config probe.key 1 && echo GIT-CONFIG-WORKS`, "--protect-git=false")
	if !strings.Contains(r.stdout, "GIT-CONFIG-WORKS") {
		t.Errorf("--protect-git=false: git config still fails: %s", r)
	}
}

// Per-project state outside the project: ~/.local and /tmp persist between
// runs of one project and are not shared with another.
func TestBwrapPerProjectState(t *testing.T) {
	requireSandboxHost(t)
	p, q := project(t), project(t)
	r := sh(t, runOpts{}, p, `mkdir -p ~/.local/bin && printf '#!/bin/sh\necho tool-ran\n' > ~/.local/bin/probe-tool && chmod +x ~/.local/bin/probe-tool && echo kept > /tmp/probe-kept`)
	if r.code != 0 {
		t.Fatalf("first run: %s", r)
	}
	r = sh(t, runOpts{}, p, `probe-tool; cat /tmp/probe-kept`)
	if !strings.Contains(r.stdout, "tool-ran") || !strings.Contains(r.stdout, "kept") {
		t.Errorf("~/.local/bin or /tmp did not persist (or ~/.local/bin is not on PATH): %s", r)
	}
	r = sh(t, runOpts{}, q, `ls ~/.local/bin/probe-tool /tmp/probe-kept 2>&1; true`)
	if strings.Count(r.stdout, "No such file") != 2 {
		t.Errorf("another project sees this project's state: %s", r)
	}
	dir := stateDir(sharedDirs(), p)
	if _, err := os.Stat(filepath.Join(dir, "local", "bin", "probe-tool")); err != nil {
		t.Errorf("the state is not in the project state directory: %v", err)
	}
	// Once the sandbox has ended (and its placeholders with it).
	waitForEntries(t, p, nil)
}

// Chromium: the managed policy is in place and valid JSON naming the Claude
// extension, the profile directory is the project's. (The fixture's
// chromium is a placeholder: nothing here starts it.)
func TestBwrapChromiumPolicyAndProfile(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	r := sh(t, runOpts{}, p, `cat /etc/chromium/policies/managed/*.json; echo; grep -c -- '--user-data-dir="$HOME/.config/chromium"' "$(command -v chromium)"; echo profile > ~/.config/chromium/probe`)
	if r.code != 0 {
		t.Fatalf("probe: %s", r)
	}
	first, _, _ := strings.Cut(r.stdout, "\n")
	var policy struct {
		ExtensionInstallForcelist []string
		ProxySettings             struct{ ProxyMode, ProxyServer string }
	}
	if err := json.Unmarshal([]byte(first), &policy); err != nil {
		t.Fatalf("the managed policy is not valid JSON: %v\n%s", err, r)
	}
	if len(policy.ExtensionInstallForcelist) == 0 || !strings.HasPrefix(policy.ExtensionInstallForcelist[0], "fcoeoabgfenejglbffodgkkbkcdhcgfn;") {
		t.Errorf("the policy does not force-install the Claude extension: %+v", policy)
	}
	// The browser obeys the sandbox's network rules: its proxy is managed.
	if policy.ProxySettings.ProxyMode != "fixed_servers" || policy.ProxySettings.ProxyServer != "127.0.0.1:3128" {
		t.Errorf("the policy does not send the browser through the sandbox's proxy: %+v", policy.ProxySettings)
	}
	if !strings.Contains(r.stdout, "\n1\n") {
		t.Errorf("chromium on PATH is not the wrapper with the per-project profile: %s", r)
	}
	if got, _ := os.ReadFile(filepath.Join(stateDir(sharedDirs(), p), "chromium", "probe")); string(got) != "profile\n" {
		t.Errorf("the Chromium profile is not in the project state directory: %q", got)
	}
}

// Project paths: spaces and newlines work, a symlinked spelling runs at the
// real path, / and $HOME are refused unless --force.
func TestBwrapProjectPaths(t *testing.T) {
	requireSandboxHost(t)
	parent := filepath.Dir(project(t))
	odd := filepath.Join(parent, "with space\nand newline")
	if err := os.Mkdir(odd, 0o755); err != nil {
		t.Fatal(err)
	}
	r := run(t, runOpts{}, "exec", odd, "--", "bash", "-c", `test "$PWD" = "$0" && echo AT-PROJECT > out`, odd)
	if got, _ := os.ReadFile(filepath.Join(odd, "out")); r.code != 0 || string(got) != "AT-PROJECT\n" {
		t.Errorf("project with a space and a newline: %s", r)
	}
	link := filepath.Join(parent, "link")
	os.Symlink(odd, link)
	r = run(t, runOpts{}, "exec", link, "--", "bash", "-c", `test "$PWD" = "$0"`, odd)
	if r.code != 0 {
		t.Errorf("a symlinked project does not run at its real path: %s", r)
	}
	home := fakeHome(t)
	for _, bad := range []string{"/", home} {
		r = run(t, runOpts{env: []string{"HOME=" + home}}, "exec", bad, "--", "true")
		if r.code != 66 || !strings.Contains(r.stderr, "hint:") {
			t.Errorf("project %s: want exit 66 with a hint: %s", bad, r)
		}
	}
	r = run(t, runOpts{env: []string{"HOME=" + home}}, "exec", "--force", home, "--", "bash", "-c", `cat .gitconfig`)
	if r.code != 0 || !strings.Contains(r.stdout, "Probe") {
		t.Errorf("--force with the home directory: %s", r)
	}
}

// --no-network leaves the loopback interface alone inside: no other
// interface, no route out (the host loopback probe is TestNetworkSwitch).
func TestBwrapNoNetworkHasOnlyLoopback(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	r := sh(t, runOpts{}, p, `tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; cat /proc/net/route | tail -n +2 | wc -l`, "--no-network")
	if r.code != 0 || strings.Fields(r.stdout)[0] != "lo" || len(strings.Fields(r.stdout)) != 2 || strings.Fields(r.stdout)[1] != "0" {
		t.Fatalf("--no-network: want only lo and no route: %s", r)
	}
}
