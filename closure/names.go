package closure

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
	"github.com/claude-sandbox/claude-sandbox/templates"
)

// The package-name lists behind `--with` completion. Listing nixpkgs'
// attribute names takes one evaluation of nixpkgs (seconds); a shell
// completion must answer in milliseconds. So a list is computed once per
// nixpkgs identity, system and attribute set, and kept under the cache
// directory as plain lines: the cached path reads one file and runs no Nix.

const namesHeader = "claude-sandbox-names 1"

func (d Dirs) names() string { return filepath.Join(d.Cache, "names") }

// namesFile is where the list of one set (nil: the top level) is kept. The
// template digest is in the name because templates/names.nix computes it.
func (d Dirs) namesFile(np nixgen.Nixpkgs, system string, set []string) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{namesHeader, np.Identity, system, templates.Digest(), strings.Join(set, ".")}, "\x00")))
	return filepath.Join(d.names(), hex.EncodeToString(sum[:16])+".txt")
}

func namesFileHeader(np nixgen.Nixpkgs, system string, set []string) string {
	return fmt.Sprintf("%s\t%s\t%s\t%s", namesHeader, np.Identity, system, strings.Join(set, "."))
}

// CachedPackageNames returns the attribute names of set (nil: the top
// level) of nixpkgs np if they were listed before; it never runs Nix.
func (b *Builder) CachedPackageNames(np nixgen.Nixpkgs, system string, set []string) ([]string, bool) {
	f, err := os.Open(b.Dirs.namesFile(np, system, set))
	if err != nil {
		return nil, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	if !sc.Scan() || sc.Text() != namesFileHeader(np, system, set) {
		return nil, false // damaged, or a hash collision: compute again
	}
	names := []string{}
	for sc.Scan() {
		if line := sc.Text(); line != "" {
			names = append(names, line)
		}
	}
	if sc.Err() != nil {
		return nil, false
	}
	return names, true
}

// PackageNames returns the attribute names of set (nil: the top level) of
// nixpkgs np: from the cache, or by one nix-instantiate (bounded by ctx)
// whose result is cached. Names that --with would refuse (not plain
// identifiers) are left out. A set that does not exist, is not a set, or
// fails to evaluate has no names; that is cached too, so the next
// completion does not pay for the same failure. A cancelled or timed-out
// evaluation is not cached.
func (b *Builder) PackageNames(ctx context.Context, np nixgen.Nixpkgs, system string, set []string) ([]string, error) {
	if names, ok := b.CachedPackageNames(np, system, set); ok {
		return names, nil
	}
	// A refusal is not remembered as "no names": it ends with a newer Nix.
	if err := b.CheckNixVersion(ctx, np); err != nil {
		return nil, err
	}
	dir, err := templates.Materialise(b.Dirs.Templates())
	if err != nil {
		return nil, err
	}
	req := nixgen.Request{Nixpkgs: np, System: system, TemplatesDir: dir}
	// names.nix lists the names beside a path: the names beside set+"_" are
	// the names in set.
	probe := append(append([]string{}, set...), "_")
	expr := nixgen.NamesExpr(req, [][]string{probe})
	res, err := nixRunner{log: b.Log}.run(ctx, "nix-instantiate", "--eval", "--strict", "--json", "--expr", expr)
	var names []string
	switch {
	case err == nil:
		var lists [][]string
		if jerr := json.Unmarshal([]byte(res.stdout), &lists); jerr != nil || len(lists) != 1 {
			return nil, fmt.Errorf("listing nixpkgs names: unexpected output from nix-instantiate")
		}
		for _, n := range lists[0] {
			if parts, perr := nixgen.ParseAttrPath(n); perr == nil && len(parts) == 1 {
				names = append(names, n)
			}
		}
	case ctx.Err() != nil:
		return nil, ctx.Err()
	default:
		var be *BuildError
		if !errors.As(err, &be) {
			return nil, err // Nix missing, daemon down: nothing to remember
		}
		if old, ok := nixpkgsRefused(be.Log); ok {
			old.Nixpkgs = np.Path
			return nil, old
		}
		b.Log.Debug().Err(err).Strs("set", set).Msg("listing nixpkgs names failed; caching an empty list")
	}
	var sb strings.Builder
	sb.WriteString(namesFileHeader(np, system, set))
	sb.WriteByte('\n')
	for _, n := range names {
		sb.WriteString(n)
		sb.WriteByte('\n')
	}
	if err := atomicfile.Write(b.Dirs.namesFile(np, system, set), []byte(sb.String()), 0o644); err != nil {
		return names, fmt.Errorf("caching nixpkgs names: %w", err)
	}
	return names, nil
}
