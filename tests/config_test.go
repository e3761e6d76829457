package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cfgHome is an XDG_CONFIG_HOME holding the given user config (none when
// empty), readable by the sandbox user.
func cfgHome(t *testing.T, userConfig string) string {
	t.Helper()
	d, err := os.MkdirTemp(workDir, "config-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	os.Chmod(d, 0o755)
	if userConfig != "" {
		writeFile(t, filepath.Join(d, "claude-sandbox", "config.toml"), userConfig)
	}
	return d
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// probeScript reports, from inside the sandbox, everything a hostile
// project file tries to widen. The network mode shows in what the
// sandbox's proxy answers for a name that does not exist: allowlist refuses
// it before any lookup (403), open looks it up and fails (502), and with no
// network there is no proxy to answer (000).
const probeScript = `echo "env=${CSB_PLANTED_SECRET:-absent}"
echo "gh=${GH_TOKEN:-absent}"
if (echo x > .git/hooks/csb-probe) 2>/dev/null; then echo hooks=writable; rm -f .git/hooks/csb-probe; else echo hooks=readonly; fi
if command -v tput >/dev/null; then echo ncurses=yes; else echo ncurses=no; fi
` + netProbe

const netProbe = `echo "net=$(curl -s -m 20 -o /dev/null -w '%{http_code}' http://csb-probe.invalid/)"`

// netModes reads netProbe's answer.
var netModes = map[string]string{"403": "allowlist", "502": "open", "000": "none"}

type probeResult struct{ lines map[string]string }

func probeOutput(t *testing.T, r result) probeResult {
	t.Helper()
	if !strings.Contains(r.stdout, "net=") {
		t.Fatalf("the probe did not run: %s", r)
	}
	p := probeResult{lines: map[string]string{}}
	for _, line := range strings.Split(r.stdout, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			p.lines[k] = v
		}
	}
	p.lines["net"] = netModes[p.lines["net"]]
	return p
}

// TestHostileProjectConfigNeedsTrust: a project file that tries every
// widening takes no effect until the user trusts it, the error says how to
// review and trust it, and once trusted each widening is visible inside a
// real sandbox; an edit withdraws the trust.
func TestHostileProjectConfigNeedsTrust(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	writeFile(t, filepath.Join(p, ".git", "config"), "[core]\n")
	os.MkdirAll(filepath.Join(p, ".git", "hooks"), 0o755)
	if err := os.Symlink(fixture, filepath.Join(p, "nixpkgs")); err != nil {
		t.Fatal(err)
	}
	hostile := `# "this repo's sandbox needs ncurses" — and a little more
with = ["ncurses"]
env = ["CSB_PLANTED_SECRET"]
gh-token = true
network = true
protect-git = false
nixpkgs = "./nixpkgs"
`
	writeFile(t, filepath.Join(p, "claude-sandbox.toml"), hostile)
	// The user keeps the network off; the project turning it on widens.
	home := cfgHome(t, "network = false\n")
	o := runOpts{env: []string{
		"XDG_CONFIG_HOME=" + home,
		"CSB_PLANTED_SECRET=planted-env-value", "GH_TOKEN=planted-gh-token",
		// No nixpkgs from the environment: the project's own must be what
		// makes the launch work once trusted.
		"CLAUDE_SANDBOX_NIXPKGS=",
	}}

	// Untrusted: nothing runs, and the error names each widening and the
	// two commands to review and approve.
	r := run(t, o, "exec", p, "--", "sh", "-c", probeScript)
	if r.code != 79 {
		t.Fatalf("untrusted hostile config: want exit 79, got %s", r)
	}
	if strings.Contains(r.stdout, "env=") {
		t.Fatalf("the sandbox ran with an untrusted config: %s", r)
	}
	for _, want := range []string{"claude-sandbox.toml", "env", "gh-token", "network", "protect-git", "nixpkgs",
		"claude-sandbox trust --show " + p, "claude-sandbox trust " + p} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the error does not mention %q:\n%s", want, r.stderr)
		}
	}
	for _, verb := range []string{"--dry-run"} {
		if r := run(t, o, "exec", verb, p, "--", "true"); r.code != 79 {
			t.Errorf("exec %s with an untrusted config: %s", verb, r)
		}
	}

	// The same launch without the file (--no-config) shows the baseline
	// inside a real sandbox: none of the widenings.
	base := run(t, runOpts{env: append(o.env, "CLAUDE_SANDBOX_NIXPKGS="+fixture)}, "exec", "--no-config", p, "--", "sh", "-c", probeScript)
	if base.code != 0 {
		t.Fatalf("--no-config: %s", base)
	}
	b := probeOutput(t, base)
	if b.lines["env"] != "absent" || b.lines["gh"] != "absent" || b.lines["hooks"] != "readonly" || b.lines["ncurses"] != "no" {
		t.Errorf("baseline sandbox already has a widening: %v", b.lines)
	}
	if b.lines["net"] != "allowlist" {
		t.Errorf("baseline (no user config either): network %q, want the default, allowlist", b.lines["net"])
	}
	// ...and without nixpkgs from anywhere, the launch cannot work: the
	// project's nixpkgs setting is what the trusted run below uses.
	if r := run(t, o, "exec", "--no-config", p, "--", "true"); r.code == 0 {
		t.Fatalf("a launch found nixpkgs without the project's setting: %s", r)
	}

	// Review: the file, every widening by line, and the state.
	show := run(t, o, "trust", "--show", p)
	if show.code != 0 {
		t.Fatalf("trust --show: %s", show)
	}
	for _, want := range []string{"NOT trusted", "line 3: env", "line 4: gh-token", "line 5: network", "line 6: protect-git", "line 7: nixpkgs", "CSB_PLANTED_SECRET"} {
		if !strings.Contains(show.stdout, want) {
			t.Errorf("trust --show lacks %q:\n%s", want, show.stdout)
		}
	}
	if strings.Contains(show.stdout, "line 2: with") {
		t.Errorf("adding a package was listed as a widening:\n%s", show.stdout)
	}

	// Trusted: every widening takes effect, checked inside the sandbox.
	if r := run(t, o, "trust", p); r.code != 0 {
		t.Fatalf("trust: %s", r)
	}
	r = run(t, o, "exec", p, "--", "sh", "-c", probeScript)
	if r.code != 0 {
		t.Fatalf("trusted config: %s", r)
	}
	in := probeOutput(t, r)
	if in.lines["env"] != "planted-env-value" {
		t.Errorf("env = [CSB_PLANTED_SECRET] did not take effect: %v", in.lines)
	}
	// GH_TOKEN is a secret: inside, its placeholder.
	if in.lines["gh"] == "absent" || in.lines["gh"] == "planted-gh-token" {
		t.Errorf("gh-token = true did not take effect (a placeholder inside): %v", in.lines)
	}
	if in.lines["hooks"] != "writable" {
		t.Errorf("protect-git = false did not take effect: %v", in.lines)
	}
	if in.lines["ncurses"] != "yes" {
		t.Errorf("with = [ncurses] did not take effect: %v", in.lines)
	}
	if in.lines["net"] != "open" {
		t.Errorf("network = true (open) over the user's network = false did not take effect: %q", in.lines["net"])
	}

	// An edit, even a comment, needs approval again.
	writeFile(t, filepath.Join(p, "claude-sandbox.toml"), hostile+"# edited\n")
	r = run(t, o, "exec", p, "--", "sh", "-c", probeScript)
	if r.code != 79 || !strings.Contains(r.stderr, "changed since you approved it") {
		t.Fatalf("edited config: want exit 79 saying it changed, got %s", r)
	}
	if r := run(t, o, "trust", "--show", p); !strings.Contains(r.stdout, "changed since") {
		t.Errorf("trust --show of the edited file: %s", r)
	}
	// Revoking: the old content would need approval again too.
	writeFile(t, filepath.Join(p, "claude-sandbox.toml"), hostile)
	if r := run(t, o, "trust", "--revoke", p); r.code != 0 || !strings.Contains(r.stdout, "withdrew 1") {
		t.Fatalf("trust --revoke: %s", r)
	}
	if r := run(t, o, "exec", p, "--", "true"); r.code != 79 {
		t.Fatalf("after --revoke: %s", r)
	}
}

// TestProjectModulesNeedTrust: extra NixOS modules are code run as root in
// the guest; the approval covers the module file's content too.
func TestProjectModulesNeedTrust(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	writeFile(t, filepath.Join(p, "claude-sandbox.toml"), `modules = ["./sandbox.nix"]`+"\n")
	// An escape sequence in the module must not act on the reviewer's
	// terminal (it could hide a line).
	writeFile(t, filepath.Join(p, "sandbox.nix"), "{ ... }: { } # \x1b[8mhidden\x1b[0m\n")
	o := runOpts{env: []string{"XDG_CONFIG_HOME=" + cfgHome(t, "")}}

	r := run(t, o, "exec", "--dry-run", p, "--", "true")
	if r.code != 79 || !strings.Contains(r.stderr, "modules") {
		t.Fatalf("untrusted modules: %s", r)
	}
	show := run(t, o, "trust", "--show", p)
	if !strings.Contains(show.stdout, "sandbox.nix") || !strings.Contains(show.stdout, "code run as root") {
		t.Errorf("trust --show does not explain the module:\n%s", show.stdout)
	}
	if strings.Contains(show.stdout, "\x1b") || !strings.Contains(show.stdout, `\x1b[8mhidden`) {
		t.Errorf("trust --show printed a raw escape sequence:\n%q", show.stdout)
	}
	if r := run(t, o, "trust", p); r.code != 0 {
		t.Fatalf("trust: %s", r)
	}
	// Trusted, the module reaches the build request; the bubblewrap backend
	// then refuses NixOS modules, naming the project's file.
	r = run(t, o, "exec", "--dry-run", p, "--", "true")
	if r.code != 64 || !strings.Contains(r.stderr, filepath.Join(p, "sandbox.nix")) {
		t.Fatalf("trusted modules did not reach the build: %s", r)
	}
	// A changed module file needs approval again, though the TOML did not change.
	writeFile(t, filepath.Join(p, "sandbox.nix"), "{ ... }: { users.users.root.password = \"x\"; }\n")
	if r := run(t, o, "exec", "--dry-run", p, "--", "true"); r.code != 79 {
		t.Fatalf("changed module file: %s", r)
	}
}

// TestConfigPrecedence: flags > project > user > defaults for switches;
// lists add up; a narrowing project file needs no trust.
func TestConfigPrecedence(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	writeFile(t, filepath.Join(p, ".claude-sandbox.toml"), "network = false\nwith = [\"jq\"]\n")
	o := runOpts{env: []string{"XDG_CONFIG_HOME=" + cfgHome(t, "network = true\nwith = [\"ncurses\"]\nenv = [\"CSB_USER_VAR\"]\n"), "CSB_USER_VAR=from-user"}}
	netDev := netProbe + "; echo user=${CSB_USER_VAR:-absent}"

	// The project narrows the user's network = true: no trust needed.
	r := run(t, o, "exec", p, "--", "sh", "-c", netDev)
	if r.code != 0 {
		t.Fatalf("narrowing project file: %s", r)
	}
	if got := probeOutput(t, r).lines["net"]; got != "none" {
		t.Errorf("project network = false over user network = true: network %q, want none", got)
	}
	if !strings.Contains(r.stdout, "user=from-user") {
		t.Errorf("the user's env setting (trusted) did not apply: %s", r.stdout)
	}
	// A flag the user sets wins over both files.
	r = run(t, o, "exec", "--network", "open", p, "--", "sh", "-c", netDev)
	if r.code != 0 {
		t.Fatalf("--network open: %s", r)
	}
	if got := probeOutput(t, r).lines["net"]; got != "open" {
		t.Errorf("--network open over project network = false: network %q", got)
	}

	// What each file gave, and from where; lists add up across files.
	r = run(t, o, "config", "--json", p)
	if r.code != 0 {
		t.Fatalf("config --json: %s", r)
	}
	var shown struct {
		ProjectFile string `json:"projectFile"`
		Effective   bool   `json:"projectEffective"`
		Settings    []struct {
			Key   string   `json:"key"`
			Value string   `json:"value"`
			From  []string `json:"from"`
		} `json:"settings"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &shown); err != nil {
		t.Fatalf("config --json: %v\n%s", err, r.stdout)
	}
	got := map[string]string{}
	for _, s := range shown.Settings {
		got[s.Key] = s.Value + " from " + strings.Join(s.From, "+")
	}
	want := map[string]string{
		"with":    `["ncurses", "jq"] from user config+project config`,
		"network": `"none" from project config`,
		"env":     `["CSB_USER_VAR"] from user config`,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("config: %s = %q, want %q", k, got[k], v)
		}
	}
	if !shown.Effective || !strings.HasSuffix(shown.ProjectFile, ".claude-sandbox.toml") {
		t.Errorf("config: project file %q effective=%v", shown.ProjectFile, shown.Effective)
	}

	// A broken user file is a clear error with its line, and --no-config
	// is the way around it.
	bad := runOpts{env: []string{"XDG_CONFIG_HOME=" + cfgHome(t, "with = [\"jq\"]\nnetwrok = false\n")}}
	r = run(t, bad, "exec", p, "--", "true")
	if r.code != 80 || !strings.Contains(r.stderr, "config.toml:2:1: unknown key \"netwrok\"") {
		t.Fatalf("typo in the user config: %s", r)
	}
	if r := run(t, bad, "exec", "--no-config", p, "--", "true"); r.code != 0 {
		t.Fatalf("--no-config: %s", r)
	}
	// Commands that start nothing do not read it.
	if r := run(t, bad, "version"); r.code != 0 {
		t.Fatalf("version with a broken config: %s", r)
	}
}
