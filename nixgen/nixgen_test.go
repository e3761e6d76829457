package nixgen

import (
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestParseAttrPathAcceptsNixpkgsNames(t *testing.T) {
	for name, want := range map[string]int{
		"python3":                 1,
		"python3Packages.numpy":   2,
		"nodePackages.typescript": 2,
		"yq-go":                   1,
		"xorg.libX11":             2,
		"haskellPackages.aeson_2": 2,
		"linuxPackages.kernel'":   2,
		"_7zz":                    1,
	} {
		parts, err := ParseAttrPath(name)
		if err != nil {
			t.Errorf("%q refused: %v", name, err)
			continue
		}
		if len(parts) != want {
			t.Errorf("%q: %d parts, want %d", name, len(parts), want)
		}
	}
}

// Every one of these would be Nix code, a path or an escape if spliced.
var hostile = []string{
	"python3; builtins.readFile /etc/shadow",
	`python3"`,
	"${builtins.readFile /etc/shadow}",
	"../etc/passwd",
	"./python3",
	"/nix/store/x",
	"python3 ",
	"a.b..c",
	".python3",
	"python3.",
	`nodePackages."@scope/x"`,
	"import ./x",
	"python3\nnodejs",
	"(python3)",
	"python3 // { }",
	"1abc",
	"-rf",
	"a.b.c.d.e.f.g.h.i",
	strings.Repeat("a", 201),
	"",
}

func TestParseAttrPathRefusesHostileNames(t *testing.T) {
	for _, name := range hostile {
		if _, err := ParseAttrPath(name); err == nil {
			t.Errorf("%q accepted", name)
		}
	}
}

func TestCanonicalizeIgnoresOrderAndDuplicates(t *testing.T) {
	a, err := Canonicalize(Options{Packages: []string{"nodejs", "python3"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Canonicalize(Options{Packages: []string{"python3", "nodejs", "python3", " nodejs", ""}})
	if err != nil {
		t.Fatal(err)
	}
	req := func(c Canonical) Request {
		return Request{Options: c, Nixpkgs: Nixpkgs{Path: "/n", Identity: "x"}, System: "x86_64-linux", TemplatesDir: "/t", TemplatesID: "d"}
	}
	if Key(req(a)) != Key(req(b)) {
		t.Fatalf("keys differ for the same package set: %v vs %v", a, b)
	}
	c, _ := Canonicalize(Options{Packages: []string{"python3"}})
	if Key(req(a)) == Key(req(c)) {
		t.Fatal("different package sets share a key")
	}
}

func TestNetworkIsRunTimeForBubblewrap(t *testing.T) {
	on, _ := Canonicalize(Options{Network: true})
	off, _ := Canonicalize(Options{Network: false})
	r := Request{Nixpkgs: Nixpkgs{Path: "/n", Identity: "x"}, System: "s", TemplatesID: "d"}
	r1, r2 := r, r
	r1.Options, r2.Options = on, off
	if Key(r1) != Key(r2) {
		t.Fatal("--no-network changed the bubblewrap key; it is a run-time switch")
	}
}

func TestKeyDependsOnEveryBuildInput(t *testing.T) {
	c, _ := Canonicalize(Options{Packages: []string{"python3"}})
	base := Request{Options: c, Nixpkgs: Nixpkgs{Path: "/n", Identity: "id"}, System: "x86_64-linux", TemplatesDir: "/t", TemplatesID: "d"}
	variants := map[string]func(*Request){
		"nixpkgs identity": func(r *Request) { r.Nixpkgs.Identity = "other" },
		"system":           func(r *Request) { r.System = "aarch64-linux" },
		"templates":        func(r *Request) { r.TemplatesID = "e" },
	}
	for name, change := range variants {
		r := base
		change(&r)
		if Key(r) == Key(base) {
			t.Errorf("changing the %s kept the key", name)
		}
	}
	moved := base
	moved.TemplatesDir, moved.Nixpkgs.Path = "/elsewhere", "/other/place"
	if Key(moved) != Key(base) {
		t.Error("moving the templates or nixpkgs on disk changed the key; only content identity should count")
	}
}

func TestCanonicalizeRefusesUnknownBackend(t *testing.T) {
	if _, err := Canonicalize(Options{Backend: "docker"}); err == nil {
		t.Fatal("accepted backend docker")
	}
}

func TestNixStringEscapesInterpolation(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:       `"plain"`,
		`${x}`:        `"\${x}"`,
		`a"b`:         `"a\"b"`,
		`back\slash`:  `"back\\slash"`,
		"line\nbreak": `"line\nbreak"`,
	} {
		if got := nixString(in); got != want {
			t.Errorf("nixString(%q) = %s, want %s", in, got, want)
		}
	}
}

func goldenRequest(t *testing.T) Request {
	c, err := Canonicalize(Options{Packages: []string{"python3", "nodejs"}})
	if err != nil {
		t.Fatal(err)
	}
	return Request{
		Options:      c,
		Nixpkgs:      Nixpkgs{Path: "/nix/store/00000000000000000000000000000000-nixpkgs", Identity: "store:/nix/store/00000000000000000000000000000000-nixpkgs"},
		System:       "x86_64-linux",
		TemplatesDir: "/home/u s/.cache/claude-sandbox/templates/${x}",
		TemplatesID:  "0123",
	}
}

func TestGeneratedExpressionGolden(t *testing.T) {
	gen, err := Generate(goldenRequest(t))
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "entry.golden.nix")
	if *update {
		if err := os.WriteFile(golden, []byte(gen.Expr), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (regenerate with: go test ./nixgen -run Golden -update)", err)
	}
	if gen.Expr != string(want) {
		t.Fatalf("generated expression changed (regenerate with: go test ./nixgen -run Golden -update)\n got:\n%s\nwant:\n%s", gen.Expr, want)
	}
}

// The golden file must be Nix that Nix accepts, and its JSON string must
// round-trip to exactly the request: checked by Nix itself, not by us.
func TestGeneratedExpressionParsesInNix(t *testing.T) {
	nix, err := exec.LookPath("nix-instantiate")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("nix-instantiate missing under CI")
		}
		t.Skip("skipped: nix-instantiate is not installed")
	}
	gen, err := Generate(goldenRequest(t))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(nix, "--parse", "-E", gen.Expr).CombinedOutput(); err != nil {
		t.Fatalf("nix-instantiate --parse rejected the expression: %v\n%s", err, out)
	}
	// Replace the import with a function that returns what it was given, to
	// read back the path and the request as Nix sees them.
	probe := strings.Replace(gen.Expr, "import (/. + ", "(path: request: { inherit path request; }) (", 1)
	out, err := exec.Command(nix, "--eval", "--strict", "--json", "-E", probe).Output()
	if err != nil {
		t.Fatalf("evaluating: %v\n%s", err, out)
	}
	var seen struct {
		Path    string         `json:"path"`
		Request map[string]any `json:"request"`
	}
	if err := json.Unmarshal(out, &seen); err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	_ = json.Unmarshal(gen.RequestJSON, &want)
	if !reflect.DeepEqual(seen.Request, want) {
		t.Fatalf("Nix read the request as\n%v\nwant\n%v", seen.Request, want)
	}
	if wantPath := goldenRequest(t).TemplatesDir + "/entry.nix"; seen.Path != wantPath {
		t.Fatalf("Nix read the templates path as %q, want %q", seen.Path, wantPath)
	}
}
