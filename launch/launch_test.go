package launch_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	. "github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/internal/launchtest"
)

var (
	handManifest = launchtest.Manifest
	env          = launchtest.Env
)

func TestSandboxEnvPassesOnlyTheAllowlist(t *testing.T) {
	host := map[string]string{
		"TERM": "xterm", "LANG": "C.UTF-8", "ANTHROPIC_API_KEY": "sk-test",
		"AWS_SECRET_ACCESS_KEY": "aws", "GITHUB_TOKEN": "gh", "SSH_AUTH_SOCK": "/tmp/agent",
		"LD_PRELOAD": "/evil.so", "PATH": "/usr/bin", "RANDOM_SECRET_1234": "x",
	}
	rt := &Runtime{Home: "/home/u", User: "u", LookupEnv: env(host)}
	got, err := SandboxEnv(handManifest(), rt)
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, kv := range got {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	for _, leaked := range []string{"AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "SSH_AUTH_SOCK", "LD_PRELOAD", "RANDOM_SECRET_1234"} {
		if _, ok := vars[leaked]; ok {
			t.Errorf("%s crossed into the sandbox", leaked)
		}
	}
	if vars["PATH"] != handManifest().Path[0] {
		t.Errorf("PATH = %q, want the manifest's", vars["PATH"])
	}
	want := map[string]string{"TERM": "xterm", "LANG": "C.UTF-8", "ANTHROPIC_API_KEY": "sk-test", "HOME": "/home/u",
		"CLAUDE_SANDBOX": "1", "CLAUDE_SANDBOX_BACKEND": "bubblewrap"}
	for k, v := range want {
		if vars[k] != v {
			t.Errorf("%s = %q, want %q", k, vars[k], v)
		}
	}
}

func TestSandboxEnvOptIn(t *testing.T) {
	rt := &Runtime{Home: "/home/u", User: "u", ExtraEnv: []string{"MY_VAR"}, LookupEnv: env(map[string]string{"MY_VAR": "1"})}
	got, err := SandboxEnv(handManifest(), rt)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, "MY_VAR=1") {
		t.Fatalf("--env MY_VAR not passed: %v", got)
	}
	for _, bad := range []string{"PATH", "A=B", "LD PRELOAD", "", "NIX_LD"} {
		rt.ExtraEnv = []string{bad}
		if _, err := SandboxEnv(handManifest(), rt); err == nil {
			t.Errorf("--env %q accepted", bad)
		}
	}
}

func TestResolveProject(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "with space\nand newline")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	got, err := ResolveProject(link, false)
	if err != nil || got != real {
		t.Fatalf("ResolveProject(symlink) = %q, %v; want %q", got, err, real)
	}
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o644)
	for _, bad := range []string{filepath.Join(dir, "missing"), file, "/", "/nix/store", "/proc/self"} {
		if _, err := ResolveProject(bad, false); err == nil {
			t.Errorf("%q accepted as a project", bad)
		}
	}
	t.Setenv("HOME", dir)
	if _, err := ResolveProject(dir, false); err == nil {
		t.Error("$HOME accepted without --force")
	}
	if _, err := ResolveProject(filepath.Dir(dir), false); err == nil {
		t.Error("a parent of $HOME accepted without --force")
	}
	if _, err := ResolveProject(dir, true); err != nil {
		t.Errorf("$HOME refused with --force: %v", err)
	}
}

func TestCheckUserNamespaces(t *testing.T) {
	fake := t.TempDir()
	old := *ProcSys
	*ProcSys = fake
	defer func() { *ProcSys = old }()
	write := func(name, v string) {
		os.MkdirAll(filepath.Dir(filepath.Join(fake, name)), 0o755)
		os.WriteFile(filepath.Join(fake, name), []byte(v+"\n"), 0o644)
	}
	if err := CheckUserNamespaces(1000); err != nil {
		t.Fatalf("no sysctls: %v", err)
	}
	write("user/max_user_namespaces", "0")
	if err := CheckUserNamespaces(1000); err == nil {
		t.Fatal("max_user_namespaces=0 not reported")
	}
	if err := CheckUserNamespaces(0); err != nil {
		t.Fatal("root needs no user namespace")
	}
	write("user/max_user_namespaces", "1000")
	write("kernel/apparmor_restrict_unprivileged_userns", "1")
	if err := CheckUserNamespaces(1000); err == nil || !strings.Contains(err.Error(), "AppArmor") {
		t.Fatalf("AppArmor restriction not reported: %v", err)
	}
}

func TestSudoArgvKeepsNamesOnly(t *testing.T) {
	host := map[string]string{"ANTHROPIC_API_KEY": "sk-value", "AWS_SECRET_ACCESS_KEY": "aws", "DISPLAY": ":0",
		"MY_VAR": "mine", "LD_PRELOAD": "/x.so", "CLAUDE_SANDBOX_NIXPKGS": "/srv/nixpkgs"}
	argv := SudoArgv("/opt/claude-sandbox", []string{"--backend=container", "./p"}, []string{"MY_VAR", "LD_PRELOAD"}, env(host))
	want := []string{"sudo", "--preserve-env=ANTHROPIC_API_KEY,CLAUDE_SANDBOX_NIXPKGS,DISPLAY,MY_VAR", "--", "/opt/claude-sandbox", "--backend=container", "./p"}
	if !slices.Equal(argv, want) {
		t.Errorf("got  %q\nwant %q", argv, want)
	}
}
