package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fixtureCopy copies the offline nixpkgs and lets edit change files in it.
func fixtureCopy(t *testing.T, edit func(root string)) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "nixpkgs")
	if out, err := exec.Command("cp", "-r", fixture, root).CombinedOutput(); err != nil {
		t.Fatalf("copying the fixture: %v\n%s", err, out)
	}
	edit(root)
	return root
}

// replaceIn replaces old (which must be there) with new in a file.
func replaceIn(t *testing.T, path, old, new string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(data), old) {
		t.Fatalf("%s does not contain %q (%v)", path, old, err)
	}
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(data), old, new)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// nixInstantiateVersion is what the Nix here says it is.
func nixInstantiateVersion(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("nix-instantiate", "--version").Output()
	fields := strings.Fields(string(out))
	if err != nil || len(fields) == 0 {
		t.Fatalf("nix-instantiate --version: %v %q", err, out)
	}
	return fields[len(fields)-1]
}

// noNixTrace: the user sees claude-sandbox's line and hint, not Nix's page.
func noNixTrace(t *testing.T, r result) {
	t.Helper()
	for _, nix := range []string{"error:", "show-trace", "evaluation aborted", "please upgrade", "building the"} {
		if strings.Contains(r.stderr, nix) {
			t.Errorf("stderr shows %q from Nix or a build start:\n%s", nix, r.stderr)
		}
	}
}

// TestNixTooOldForNixpkgs: a nixpkgs whose floor is above any Nix (the
// fixture's own gate, in nixpkgs' shape, raised to 99.0). nixpkgs itself
// refuses this Nix; claude-sandbox says so first, before any evaluation,
// with its own exit code, for a build, a launch and doctor.
func TestNixTooOldForNixpkgs(t *testing.T) {
	requireSandboxHost(t)
	future := fixtureCopy(t, func(root string) {
		replaceIn(t, filepath.Join(root, "lib/minver.nix"), `"2.8"`, `"99.0"`)
		replaceIn(t, filepath.Join(root, "lib/minfeatures.nix"), `"2.8"`, `"99.0"`)
		replaceIn(t, filepath.Join(root, "lib/minfeatures.nix"), "at least 2.8", "at least 99.0")
	})
	// The gate is real: nixpkgs' check, evaluated by this Nix, refuses it.
	direct, err := exec.Command("nix-instantiate", "--eval", "--expr", "(import "+future+" { }).coreutils.name").CombinedOutput()
	if err == nil || !strings.Contains(string(direct), "requires an implementation of Nix with the following features") {
		t.Fatalf("the raised fixture does not refuse this Nix by itself: %v\n%s", err, direct)
	}

	found := nixInstantiateVersion(t)
	o := runOpts{dirs: freshDirs(t), env: []string{"CLAUDE_SANDBOX_NIXPKGS=" + future}}
	for _, args := range [][]string{{"build"}, {"exec", project(t), "--", "true"}} {
		r := run(t, o, args...)
		if r.code != 76 {
			t.Fatalf("%v: exit %d, want 76: %s", args, r.code, r)
		}
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "claude-sandbox: Nix "+found+" ") ||
			!strings.Contains(lines[0], "needs Nix 99.0 or newer") || !strings.Contains(lines[0], future) {
			t.Errorf("%v: want one line naming Nix %s, the nixpkgs and 99.0, and a hint:\n%s", args, found, r.stderr)
		}
		for _, fix := range []string{"Debian 13", "https://nixos.org/download", "Lix"} {
			if !strings.Contains(lines[len(lines)-1], fix) {
				t.Errorf("%v: the hint does not name %q:\n%s", args, fix, r.stderr)
			}
		}
		noNixTrace(t, r)
	}

	r := run(t, o, "doctor", "--json")
	var report doctorReport
	if err := json.Unmarshal([]byte(r.stdout), &report); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, r)
	}
	c := report.get(t, "nixpkgs")
	if c.Status != "fail" || !strings.Contains(c.Detail, "needs Nix 99.0 or newer") || !strings.Contains(c.Detail, found) ||
		!strings.Contains(c.Fix, "Debian 13") || strings.Contains(c.Fix, "apt-get install nix-bin") {
		t.Errorf("doctor's nixpkgs line: %+v", c)
	}
	if r.code != 1 || report.OK {
		t.Errorf("doctor passed with a nixpkgs this Nix cannot evaluate: exit %d", r.code)
	}
}

// TestNixpkgsRefusalIsRecognised: a condition claude-sandbox cannot read as
// a version (a builtin no Nix has) is left to nixpkgs' own check, whose
// refusal still becomes the same one-line error and code.
func TestNixpkgsRefusalIsRecognised(t *testing.T) {
	requireSandboxHost(t)
	future := fixtureCopy(t, func(root string) {
		replaceIn(t, filepath.Join(root, "lib/minfeatures.nix"), "  required = [\n", `  required = [
    {
      description = "the claudeSandboxFuture builtin";
      condition = builtins ? claudeSandboxFuture;
    }
`)
	})
	r := run(t, runOpts{dirs: freshDirs(t), env: []string{"CLAUDE_SANDBOX_NIXPKGS=" + future}}, "build")
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	last := lines[len(lines)-2]
	if r.code != 76 || !strings.Contains(last, "Nix "+nixInstantiateVersion(t)) || !strings.Contains(last, "the claudeSandboxFuture builtin") {
		t.Fatalf("want exit 76 naming the missing feature: %s", r)
	}
	for _, nix := range []string{"error:", "show-trace", "evaluation aborted"} {
		if strings.Contains(r.stderr, nix) {
			t.Errorf("stderr shows Nix's %q:\n%s", nix, r.stderr)
		}
	}
}
