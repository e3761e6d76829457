package closure

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/nixgen"
)

// Nix's own comparison, as nixpkgs applies it to builtins.nixVersion.
func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"2.8.0", "2.18", -1},
		{"2.18", "2.8.0", 1},
		{"2.18.0", "2.18", 1}, // a missing component is older than a number
		{"2.18", "2.18", 0},
		{"2.26.3", "2.18.0", 1},
		{"2.18", "2.18.3-lix", -1}, // Lix reports 2.18.3-lix: accepted by a 2.18 floor
		{"2.91.1", "2.18", 1},
		{"2.3pre1", "2.3", -1},
		{"2.3pre3", "2.3pre12", -1},
		{"2.3a", "2.3.1", -1}, // a word is older than a number
		{"2.3a", "2.3c", -1},
		{"1.0", "2.3", -1},
		{"", "1", -1},
	} {
		if got := CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

// nixpkgsTree writes lib/ files of a nixpkgs-shaped tree.
func nixpkgsTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, text := range files {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// The shape current nixpkgs has: a feature list whose version condition
// carries the floor, with a comment mentioning another version.
const featuresFile = `let
  features = [
    { description = "the nixVersion builtin"; condition = builtins ? nixVersion; }
    {
      description = "nixVersion is at least 2.18";
      # Lix says 2.18 whatever it is; the floor stays here (not 2.30).
      condition = builtins ? nixVersion && builtins.compareVersions "2.18" builtins.nixVersion != 1;
    }
    { description = "a builtin only newer Nix has"; condition = builtins ? fetchTree; }
  ];
  evaluated = builtins.partition (f: f.condition) features;
in { all = features; supported = evaluated.right; missing = evaluated.wrong; }
`

func TestNixpkgsMinimum(t *testing.T) {
	for _, c := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"minfeatures", map[string]string{"lib/minfeatures.nix": featuresFile}, "2.18"},
		{"minver only", map[string]string{"lib/minver.nix": "# the floor\n\"2.3.17\"\n"}, "2.3.17"},
		{"both: the higher", map[string]string{"lib/minver.nix": `"2.3.17"`, "lib/minfeatures.nix": featuresFile}, "2.18"},
		{"neither", map[string]string{"default.nix": "{ ... }: { }"}, ""},
		{"the other way round", map[string]string{"lib/minfeatures.nix": `{ missing = builtins.filter (x: x) [ (builtins.compareVersions builtins.nixVersion "2.20" < 0) ]; }`}, "2.20"},
		{"lib.versionAtLeast", map[string]string{"lib/minfeatures.nix": `[ (lib.versionAtLeast builtins.nixVersion "2.24") ]`}, "2.24"},
		{"commented out", map[string]string{"lib/minfeatures.nix": "# compareVersions \"9.9\" builtins.nixVersion\n/* compareVersions \"8.8\" nixVersion */\n" + featuresFile}, "2.18"},
		{"a string with a hash", map[string]string{"lib/minfeatures.nix": `[ { description = "#1"; condition = builtins.compareVersions "2.19" builtins.nixVersion != 1; } ]`}, "2.19"},
		{"minver not a version", map[string]string{"lib/minver.nix": `builtins.readFile ./x`}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := NixpkgsMinimum(nixpkgsTree(t, c.files))
			if err != nil || got != c.want {
				t.Errorf("NixpkgsMinimum = %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

func TestParseNixVersion(t *testing.T) {
	for out, want := range map[string]string{
		"nix-instantiate (Nix) 2.8.0\n":                  "2.8.0",
		"nix-instantiate (Nix) 2.26.3":                   "2.26.3",
		"nix-instantiate (Lix, like Nix) 2.91.1\n":       "2.91.1",
		"nix-instantiate (Determinate Nix 3.6.2) 2.29.0": "2.29.0",
		"":              "",
		"something odd": "",
	} {
		if got := parseNixVersion(out); got != want {
			t.Errorf("parseNixVersion(%q) = %q, want %q", out, got, want)
		}
	}
}

// What Nix 2.8 prints when the test fixture's default.nix (nixpkgs' check,
// same text) refuses it; and nixpkgs' older, version-only refusal.
func TestNixpkgsRefused(t *testing.T) {
	features := []string{
		"error: evaluation aborted with the following error message: '",
		"       This version of Nixpkgs requires an implementation of Nix with the following features:",
		"       - `builtins.nixVersion` reports at least 2.18",
		"       - the `fetchTree` builtin",
		"",
		"       You are evaluating with Nix 2.8.0, please upgrade:",
		"",
		"       - If you are running NixOS, `nixos-rebuild' can be used to upgrade your system.",
		"       '",
		"(use '--show-trace' to show detailed location information)",
	}
	e, ok := nixpkgsRefused(features)
	if !ok || e.Found != "2.8.0" || e.Needs != "" || len(e.Features) != 2 || e.Features[1] != "the `fetchTree` builtin" {
		t.Errorf("features refusal: %v %+v", ok, e)
	}
	e.Nixpkgs = "/nix/store/x-source"
	if msg := e.Error(); !strings.Contains(msg, "Nix 2.8.0") || !strings.Contains(msg, "reports at least 2.18") || strings.Contains(msg, "\n") {
		t.Errorf("message: %q", msg)
	}

	version := []string{
		"error: evaluation aborted with the following error message: '",
		"       This version of Nixpkgs requires Nix >= 2.3.17, please upgrade:",
	}
	if e, ok := nixpkgsRefused(version); !ok || e.Needs != "2.3.17" {
		t.Errorf("version refusal: %v %+v", ok, e)
	}
	if _, ok := nixpkgsRefused([]string{"error: attribute 'x' missing"}); ok {
		t.Error("an unrelated failure read as nixpkgs refusing Nix")
	}
}

// fakeNixInstantiate puts a nix-instantiate on PATH that answers --version
// and fails the test (through a marker file) if anything else is asked.
func fakeNixInstantiate(t *testing.T, version string) (evaluated func() bool) {
	t.Helper()
	dir := t.TempDir()
	marker := filepath.Join(dir, "evaluated")
	script := "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'nix-instantiate (Nix) " + version + "'; exit 0; fi\ntouch " + marker + "\nexit 1\n"
	if err := os.WriteFile(filepath.Join(dir, "nix-instantiate"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	return func() bool { _, err := os.Stat(marker); return err == nil }
}

func TestCheckNixVersion(t *testing.T) {
	tree := nixpkgsTree(t, map[string]string{"lib/minfeatures.nix": featuresFile})
	b := &Builder{Dirs: Dirs{Cache: t.TempDir(), State: t.TempDir()}}
	ctx := context.Background()

	evaluated := fakeNixInstantiate(t, "2.8.0")
	err := b.CheckNixVersion(ctx, nixgen.Nixpkgs{Path: tree})
	var old *NixTooOldError
	if !errors.As(err, &old) || old.Found != "2.8.0" || old.Needs != "2.18" || old.Nixpkgs != tree {
		t.Fatalf("Nix 2.8 against a 2.18 floor: %v", err)
	}
	if evaluated() {
		t.Error("the check evaluated something")
	}

	// The version is remembered per binary: a new binary is asked again.
	fakeNixInstantiate(t, "2.26.3")
	if err := b.CheckNixVersion(ctx, nixgen.Nixpkgs{Path: tree}); err != nil {
		t.Errorf("Nix 2.26 against a 2.18 floor: %v", err)
	}
	if data, _ := os.ReadFile(b.Dirs.nixVersionFile()); !strings.Contains(string(data), `"2.26.3"`) {
		t.Errorf("cached version: %s", data)
	}

	// No floor stated: nothing to check, and no Nix asked.
	t.Setenv("PATH", t.TempDir())
	if err := b.CheckNixVersion(ctx, nixgen.Nixpkgs{Path: t.TempDir()}); err != nil {
		t.Errorf("a tree without a floor: %v", err)
	}
	var missing *NixMissingError
	if err := b.CheckNixVersion(ctx, nixgen.Nixpkgs{Path: tree}); !errors.As(err, &missing) {
		t.Errorf("no nix-instantiate: %v", err)
	}
}
