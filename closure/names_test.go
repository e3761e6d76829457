package closure

import (
	"os"
	"slices"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
)

func TestCachedPackageNames(t *testing.T) {
	b := &Builder{Dirs: Dirs{Cache: t.TempDir(), State: t.TempDir()}}
	np := nixgen.Nixpkgs{Path: "/nix/store/x-nixpkgs", Identity: "store:/nix/store/x-nixpkgs"}
	if _, ok := b.CachedPackageNames(np, "x86_64-linux", nil); ok {
		t.Fatal("a hit in an empty cache")
	}
	file := b.Dirs.namesFile(np, "x86_64-linux", nil)
	write := func(text string) {
		if err := atomicfile.Write(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(namesFileHeader(np, "x86_64-linux", nil) + "\njq\npython3\n")
	if names, ok := b.CachedPackageNames(np, "x86_64-linux", nil); !ok || !slices.Equal(names, []string{"jq", "python3"}) {
		t.Fatalf("cached names = %v, %v", names, ok)
	}
	// Another set, system or nixpkgs is another list.
	if _, ok := b.CachedPackageNames(np, "x86_64-linux", []string{"python3Packages"}); ok {
		t.Error("the top-level list answered for python3Packages")
	}
	other := nixgen.Nixpkgs{Path: np.Path, Identity: "store:/nix/store/y-nixpkgs"}
	if _, ok := b.CachedPackageNames(other, "x86_64-linux", nil); ok {
		t.Error("one nixpkgs' list answered for another")
	}
	// A file whose header does not describe the request is a miss.
	write("something else\njq\n")
	if _, ok := b.CachedPackageNames(np, "x86_64-linux", nil); ok {
		t.Error("a damaged list was used")
	}
	// An empty list (a set with no names, or one that failed to evaluate)
	// is a hit: the next completion does not pay for the same failure.
	write(namesFileHeader(np, "x86_64-linux", nil) + "\n")
	if names, ok := b.CachedPackageNames(np, "x86_64-linux", nil); !ok || len(names) != 0 {
		t.Errorf("empty list: %v, %v", names, ok)
	}
	os.Remove(file)
}
