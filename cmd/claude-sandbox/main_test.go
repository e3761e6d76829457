package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/launch/backends"
)

// runCaptured runs the CLI in-process with an empty PATH: none of these
// failures may need (or reach) Nix.
func runCaptured(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runCapturedWithPath(t, t.TempDir(), args...)
}

func runCapturedWithPath(t *testing.T, path string, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv("PATH", path)
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	t.Setenv("CLAUDE_SANDBOX_NIXPKGS", t.TempDir())
	var stdout, stderr bytes.Buffer
	a := &app{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }}
	root := a.newRootCmd()
	root.SetArgs(args)
	err := root.Execute()
	if err != nil {
		printError(&stderr, err)
	}
	return exitCode(err), stdout.String(), stderr.String()
}

func TestFailuresBeforeNixHaveDistinctCodes(t *testing.T) {
	project := t.TempDir()
	cases := []struct {
		name string
		args []string
		code int
		says string
	}{
		{"unknown flag", []string{"--bogus"}, exitUsage, "unknown flag"},
		{"bad log format", []string{"--log-format", "xml", "version"}, exitUsage, "log-format"},
		{"exec without command", []string{"exec", project}, exitUsage, "needs a project and a command"},
		{"two projects", []string{"exec", project, "extra", "--", "true"}, exitUsage, "unexpected argument"},
		{"code as a package", []string{"build", "--with", "python3; builtins.readFile /etc/shadow"}, exitInvalidPackage, "invalid package name"},
		{"interpolation", []string{"build", "--with", "${builtins.currentTime}"}, exitInvalidPackage, "invalid package name"},
		{"path as a package", []string{"build", "--with", "../etc"}, exitInvalidPackage, "invalid package name"},
		{"missing project", []string{"exec", "/nonexistent/project", "--", "true"}, exitProject, "does not exist"},
		{"project is root", []string{"exec", "/", "--", "true"}, exitProject, "root directory"},
		{"unknown backend", []string{"build", "--backend", "docker"}, exitUsage, "unknown backend"},
		{"nixpkgs not a tree", []string{"build", "--nixpkgs", "/nonexistent"}, exitNixpkgs, "nixpkgs"},
		// Each command takes its own flags only.
		{"ps with a launch flag", []string{"ps", "--accel", "kvm"}, exitUsage, "unknown flag: --accel"},
		{"stop with a build flag", []string{"stop", "--with", "python3"}, exitUsage, "unknown flag: --with"},
		{"build with a launch flag", []string{"build", "--tmux"}, exitUsage, "unknown flag: --tmux"},
		{"an unknown backend at launch", []string{"--backend", "docker", project}, exitUsage, "unknown backend"},
		{"unprotect what is not protected", []string{"exec", "--unprotect", "src", project, "--", "true"}, exitUsage, "--unprotect \"src\": not protected"},
		{"unprotect outside", []string{"exec", "--unprotect", "~/.ssh", project, "--", "true"}, exitUsage, "only ~/.claude"},
	}
	// A switch a backend cannot honour is refused before anything is built
	// (with --dry-run too).
	refused := 0
	for _, name := range backends.Names() {
		if b, _ := backends.Get(name); !b.Traits().Tmux {
			refused++
			for _, dry := range []string{"--dry-run=false", "--dry-run"} {
				cases = append(cases, struct {
					name string
					args []string
					code int
					says string
				}{"tmux, " + name + " " + dry, []string{"--backend", name, "--tmux", dry, project}, exitUsage, "--tmux: not supported by the " + name + " backend"})
			}
		}
	}
	if refused == 0 {
		t.Fatal("every backend supports --tmux: nothing to refuse")
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runCaptured(t, c.args...)
			if code != c.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, c.code, stderr)
			}
			if !strings.Contains(stderr, c.says) {
				t.Errorf("stderr does not say %q:\n%s", c.says, stderr)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if len(lines) > 2 || !strings.HasPrefix(lines[0], "claude-sandbox: ") {
				t.Errorf("want one error line and at most one hint, got:\n%s", stderr)
			}
		})
	}
}

// A cold build with no Nix on PATH says so (with the install hint), and a
// named nixpkgs that is not a nixpkgs tree is refused before Nix is needed.
func TestNoNixIsAClearError(t *testing.T) {
	nixpkgs := t.TempDir()
	os.WriteFile(filepath.Join(nixpkgs, "default.nix"), []byte("{ ... }: { }"), 0o644)
	code, _, stderr := runCaptured(t, "build", "--nixpkgs", nixpkgs)
	if code != exitNixMissing || !strings.Contains(stderr, "nix-instantiate not found") || !strings.Contains(stderr, "hint:") {
		t.Fatalf("exit %d, want %d:\n%s", code, exitNixMissing, stderr)
	}
}

// TestEntryPresetsReachEveryCommand: the entry commands (claude-sandbox-vm,
// the Nix package's wrappers) put their preset flags before whatever the
// user types, a subcommand included.
func TestEntryPresetsReachEveryCommand(t *testing.T) {
	for _, sub := range [][]string{{"version"}, {"ps"}, {"cache", "ls"}} {
		args := append([]string{"--backend=vm", "--no-network", "--prebuilt", "/nonexistent.json"}, sub...)
		if code, _, stderr := runCaptured(t, args...); code != 0 {
			t.Errorf("%v: exit %d:\n%s", args, code, stderr)
		}
	}
	for _, name := range backends.Names() {
		entry := "/usr/bin/" + backends.EntryPrefix + name
		if got := entryArgs([]string{entry, "ps"}); len(got) != 2 || got[0] != "--backend="+name || got[1] != "ps" {
			t.Errorf("%s ps: %q", entry, got)
		}
	}
}

// A cold build whose nixpkgs needs a newer Nix than the one on PATH stops
// before any evaluation, with its own code, the versions and the fix.
func TestNixTooOldIsAClearError(t *testing.T) {
	nixpkgs := t.TempDir()
	os.WriteFile(filepath.Join(nixpkgs, "default.nix"), []byte("{ ... }: { }"), 0o644)
	os.MkdirAll(filepath.Join(nixpkgs, "lib"), 0o755)
	os.WriteFile(filepath.Join(nixpkgs, "lib", "minver.nix"), []byte(`"2.18.0"`), 0o644)
	bin := t.TempDir()
	evaluated := filepath.Join(bin, "evaluated")
	fake := "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'nix-instantiate (Nix) 2.8.0'; exit 0; }\ntouch " + evaluated + "\nexit 1\n"
	os.WriteFile(filepath.Join(bin, "nix-instantiate"), []byte(fake), 0o755)

	code, _, stderr := runCapturedWithPath(t, bin, "build", "--nixpkgs", nixpkgs)
	if code != exitNixTooOld {
		t.Fatalf("exit %d, want %d:\n%s", code, exitNixTooOld, stderr)
	}
	for _, says := range []string{"Nix 2.8.0", "needs Nix 2.18.0 or newer", "Debian 13", "hint:"} {
		if !strings.Contains(stderr, says) {
			t.Errorf("stderr does not say %q:\n%s", says, stderr)
		}
	}
	if _, err := os.Stat(evaluated); err == nil {
		t.Error("nix-instantiate was asked to evaluate")
	}
}

func TestVersion(t *testing.T) {
	code, stdout, _ := runCaptured(t, "version")
	if code != 0 || !strings.HasPrefix(stdout, "claude-sandbox ") {
		t.Fatalf("version: %d %q", code, stdout)
	}
}

// --protect-git=false is --unprotect .git; --protect and --unprotect reach
// the launch as given.
func TestProtectFlags(t *testing.T) {
	project := t.TempDir()
	for _, c := range []struct {
		args      []string
		protect   bool
		unprotect string
	}{
		{nil, true, ""},
		{[]string{"--protect-git=false"}, true, ".git"},
		{[]string{"--unprotect", ".vscode/", "--unprotect", "~/.claude/settings.json", "--protect-git=false"}, true, ".git,.vscode,~/.claude/settings.json"},
		{[]string{"--protect=false"}, false, ""},
	} {
		a := &app{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(string) string { return "" }}
		root := a.newRootCmd()
		if err := root.ParseFlags(c.args); err != nil {
			t.Fatal(err)
		}
		rt, err := a.runtimeFor(project, launchMode{})
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if rt.Protect != c.protect || strings.Join(rt.Unprotect, ",") != c.unprotect {
			t.Errorf("%v: protect=%v unprotect=%q", c.args, rt.Protect, rt.Unprotect)
		}
	}
}
