package launch

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

func handManifest() *manifest.Manifest {
	s := "/nix/store/0000000000000000000000000000000a-"
	return &manifest.Manifest{
		Schema: 1, Backend: "bubblewrap",
		Bwrap: s + "bubblewrap/bin/bwrap", Env: s + "env", Path: []string{s + "env/bin"},
		Shell: s + "bash/bin/bash", UsrBinEnv: s + "coreutils/bin/env", Claude: s + "claude-code/bin/claude",
		NixLd:   manifest.NixLd{Loader: s + "nix-ld/libexec/nix-ld", Path: "/lib64/ld-linux-x86-64.so.2", NixLd: s + "libs/share/nix-ld/lib/ld.so", NixLdLibraryDir: s + "libs/share/nix-ld/lib"},
		HostEtc: []string{"resolv.conf", "hosts"},
	}
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

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

func index(args []string, seq ...string) int {
	for i := range args {
		if i+len(seq) <= len(args) && slices.Equal(args[i:i+len(seq)], seq) {
			return i
		}
	}
	return -1
}

func TestBubblewrapMountsAndOrder(t *testing.T) {
	rt := &Runtime{Project: "/tmp/proj", Home: "/home/u", User: "u", Network: true, LookupEnv: env(nil)}
	inv, err := Bubblewrap(handManifest(), rt)
	if err != nil {
		t.Fatal(err)
	}
	a := inv.Args
	for _, seq := range [][]string{
		{"--unshare-pid"}, {"--unshare-ipc"}, {"--unshare-uts"},
		{"--ro-bind", "/nix/store", "/nix/store"},
		{"--bind", "/tmp/proj", "/tmp/proj"},
		{"--chdir", "/tmp/proj"},
		{"--tmpfs", "/home"},
		{"--symlink", handManifest().Shell, "/bin/sh"},
		{"--symlink", handManifest().UsrBinEnv, "/usr/bin/env"},
		{"--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"},
	} {
		if index(a, seq...) < 0 {
			t.Errorf("missing %v in %v", seq, a)
		}
	}
	if index(a, "--unshare-net") >= 0 {
		t.Error("network on, but --unshare-net given")
	}
	if index(a, "--tmpfs", "/tmp") > index(a, "--bind", "/tmp/proj", "/tmp/proj") {
		t.Error("the /tmp tmpfs comes after the project bind and would hide a project under /tmp")
	}
	if a[len(a)-1] != handManifest().Claude {
		t.Errorf("default command is %q, want Claude Code", a[len(a)-1])
	}
	for _, arg := range a {
		if strings.Contains(arg, "sk-") {
			t.Errorf("a secret is on the command line: %q", arg)
		}
	}

	rt.Network = false
	inv, _ = Bubblewrap(handManifest(), rt)
	if index(inv.Args, "--unshare-net") < 0 {
		t.Error("--no-network did not unshare the network")
	}
}

func TestBubblewrapHomeOutsideHome(t *testing.T) {
	rt := &Runtime{Project: "/srv/p", Home: "/root", User: "root", LookupEnv: env(nil)}
	inv, _ := Bubblewrap(handManifest(), rt)
	if index(inv.Args, "--tmpfs", "/root") < 0 {
		t.Fatalf("a home outside /home must get its own tmpfs: %v", inv.Args)
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
	old := procSys
	procSys = fake
	defer func() { procSys = old }()
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
