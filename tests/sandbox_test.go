package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sh runs a bash script inside the sandbox of project p.
func sh(t *testing.T, o runOpts, p, script string, flags ...string) result {
	t.Helper()
	args := append([]string{"exec"}, flags...)
	args = append(args, p, "--", "bash", "-c", script)
	return run(t, o, args...)
}

func TestExecPassesExitCodeThrough(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	for _, code := range []int{0, 1, 42, 113} {
		r := sh(t, runOpts{}, p, fmt.Sprintf("exit %d", code))
		if r.code != code {
			t.Errorf("exit %d inside, %d outside: %s", code, r.code, r)
		}
	}
}

func TestProjectIsWritableAtItsRealPath(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	os.WriteFile(filepath.Join(p, "in.txt"), []byte("from host\n"), 0o644)
	r := run(t, runOpts{}, "exec", p, "--", "bash", "-c", `test "$PWD" = "$0" && cat in.txt && echo from sandbox > out.txt`, p)
	if r.code != 0 || !strings.Contains(r.stdout, "from host") {
		t.Fatalf("project not readable at its path: %s", r)
	}
	got, err := os.ReadFile(filepath.Join(p, "out.txt"))
	if err != nil || string(got) != "from sandbox\n" {
		t.Fatalf("write inside the sandbox did not reach the host: %q %v", got, err)
	}
}

func TestStoreIsReadOnly(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	b := buildJSON(t, runOpts{})
	probe := "claude-sandbox-probe-" + fmt.Sprint(time.Now().UnixNano())
	r := sh(t, runOpts{}, p, fmt.Sprintf(`touch /nix/store/%s; a=$?; echo x >> %s/share/claude-sandbox/manifest.json; b=$?; [ $a -ne 0 ] && [ $b -ne 0 ]`, probe, b.OutPath))
	if r.code != 0 {
		t.Fatalf("a write to /nix/store succeeded inside the sandbox: %s", r)
	}
	if _, err := os.Stat("/nix/store/" + probe); err == nil {
		os.Remove("/nix/store/" + probe)
		t.Fatal("the sandbox created a file in the host store")
	}
}

func TestHostHomeIsInvisible(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	home := filepath.Join(t.TempDir(), "home")
	// Not ~/.ssh: that one is forwarded read-only, as in the original
	// project (tests/bwrap_files_test.go checks it).
	os.MkdirAll(filepath.Join(home, ".aws"), 0o755)
	secret := filepath.Join(home, ".aws", "credentials")
	os.WriteFile(secret, []byte("PLANTED-SECRET-KEY\n"), 0o644)
	r := run(t, runOpts{env: []string{"HOME=" + home}}, "exec", p, "--", "bash", "-c",
		`cat "$0" 2>/dev/null; echo "home=$HOME"; ls -A "$HOME"; cat /etc/shadow 2>/dev/null; true`, secret)
	if r.code != 0 {
		t.Fatalf("probe failed to run: %s", r)
	}
	if strings.Contains(r.stdout, "PLANTED-SECRET-KEY") || strings.Contains(r.stdout, ".aws") {
		t.Fatalf("the host home is visible inside: %s", r)
	}
	if !strings.Contains(r.stdout, "home="+home) {
		t.Fatalf("HOME inside is not the user's home path: %s", r)
	}
}

func TestHostEnvironmentDoesNotLeak(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	secrets := map[string]string{
		"AWS_SECRET_ACCESS_KEY":                "aws-planted-9f8e7d",
		"GITHUB_TOKEN":                         "gh-planted-1a2b3c",
		"CLAUDE_SANDBOX_RANDOM_NAME_" + "Q7X2": "random-planted-5d6e",
	}
	var env []string
	for k, v := range secrets {
		env = append(env, k+"="+v)
	}
	env = append(env, "ANTHROPIC_API_KEY=sk-allowed-probe")
	r := sh(t, runOpts{env: env}, p, `env; tr '\0' '\n' < /proc/self/environ; bash -c 'tr "\0" "\n" < /proc/$$/environ'; tr '\0' '\n' < /proc/1/environ 2>/dev/null; true`)
	if r.code != 0 {
		t.Fatalf("probe failed: %s", r)
	}
	for k, v := range secrets {
		if strings.Contains(r.stdout, v) || strings.Contains(r.stdout, k) {
			t.Errorf("%s is visible inside the sandbox", k)
		}
	}
	// ANTHROPIC_API_KEY is a secret: inside, a placeholder of its shape.
	if !strings.Contains(r.stdout, "ANTHROPIC_API_KEY=sk-") || strings.Contains(r.stdout, "sk-allowed-probe") {
		t.Errorf("ANTHROPIC_API_KEY inside is not a placeholder: %s", r)
	}
	if !strings.Contains(r.stdout, "CLAUDE_SANDBOX=1") {
		t.Errorf("CLAUDE_SANDBOX=1 missing: %s", r)
	}

	r = sh(t, runOpts{env: env}, p, `echo "got=$GITHUB_TOKEN"`, "--env", "GITHUB_TOKEN")
	if !strings.Contains(r.stdout, "got=gh-planted-1a2b3c") {
		t.Errorf("--env GITHUB_TOKEN did not opt the variable in: %s", r)
	}
}

func TestHostProcessesAreInvisible(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	r := sh(t, runOpts{}, p, fmt.Sprintf(`kill -0 %d 2>/dev/null && echo SIGNALLED; ls /proc | grep -c '^[0-9]'`, os.Getpid()))
	if strings.Contains(r.stdout, "SIGNALLED") {
		t.Fatalf("the sandbox can signal a host process: %s", r)
	}
	var n int
	fmt.Sscan(strings.TrimSpace(r.stdout), &n)
	if n == 0 || n > 5 {
		t.Fatalf("the sandbox sees %d processes; its own pid namespace has a handful: %s", n, r)
	}
}

// The network, checked against a real listener on the host's loopback: a
// direct connection never reaches it, the proxy only when a rule names it.
func TestNetworkSwitch(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	checkNetworkSwitch(t, "sandbox", func(script string, flags ...string) result { return sh(t, runOpts{}, p, script, flags...) })
}

func TestClaudeCodeRunsInside(t *testing.T) {
	requireSandboxHost(t)
	pkg := "/opt/claude-sandbox-ci/node_modules/@anthropic-ai/claude-code/package.json"
	data, err := os.ReadFile(pkg)
	if err != nil {
		t.Fatalf("Claude Code is not installed at %s (tests/run.sh installs it): %v", pkg, err)
	}
	var meta struct{ Version string }
	json.Unmarshal(data, &meta)
	p := project(t)
	// The main job: `claude-sandbox PROJECT -- ARGS` hands ARGS to Claude Code.
	r := run(t, runOpts{}, p, "--", "--version")
	if r.code != 0 || !strings.Contains(r.stdout, meta.Version+" (Claude Code)") {
		t.Fatalf("claude --version inside the sandbox: want %s: %s", meta.Version, r)
	}
}

func TestShellMode(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	r := run(t, runOpts{stdin: "echo shell-at-$PWD; readlink /bin/sh; exit 7\n"}, "--shell", p)
	if r.code != 7 || !strings.Contains(r.stdout, "shell-at-"+p) || !strings.Contains(r.stdout, "/nix/store/") {
		t.Fatalf("--shell: %s", r)
	}
}

func TestShebangsAndEnvWork(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	os.WriteFile(filepath.Join(p, "s.sh"), []byte("#!/usr/bin/env bash\necho env-shebang-ok\n"), 0o755)
	os.WriteFile(filepath.Join(p, "t.sh"), []byte("#!/bin/sh\necho sh-shebang-ok\n"), 0o755)
	r := sh(t, runOpts{}, p, `./s.sh && ./t.sh`)
	if r.code != 0 || !strings.Contains(r.stdout, "env-shebang-ok") || !strings.Contains(r.stdout, "sh-shebang-ok") {
		t.Fatalf("shebangs: %s", r)
	}
}

func TestWithAddsAPackage(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	r := run(t, runOpts{}, "exec", "--with", "python3", p, "--", "python3", "-c", "import json; print(json.dumps({'ok': 1}))")
	if r.code != 0 || !strings.Contains(r.stdout, `{"ok": 1}`) {
		t.Fatalf("python3 from --with: %s", r)
	}
}

// A Python library named with --with is importable by the sandbox's python3,
// also when python3 itself is named: nixpkgs' interpreter sees only the
// libraries of its withPackages environment. And pip stays importable.
func TestWithPythonLibraryIsImportable(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	script := "import pip, wheel; print('imported', wheel.__name__, pip.__name__)"
	for _, with := range []string{"python3Packages.wheel", "python3,python3Packages.wheel", "python3Packages.wheel,python311"} {
		r := run(t, runOpts{}, "exec", "--with", with, p, "--", "python3", "-c", script)
		if r.code != 0 || !strings.Contains(r.stdout, "imported wheel pip") {
			t.Errorf("--with %s: %s", with, r)
		}
	}
	if r := run(t, runOpts{}, "exec", "--with", "python3", p, "--", "python3", "-m", "pip", "--version"); r.code != 0 {
		t.Errorf("--with python3 hides pip from python3: %s", r)
	}
}
