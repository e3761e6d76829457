package closure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
)

// A nixpkgs refuses to evaluate under a Nix older than it supports, from
// its default.nix, before anything else: with lib/minver.nix ("2.18.0", the
// whole file) in older trees, with lib/minfeatures.nix in current ones (a
// list of { description; condition; }, one condition being
// `compareVersions "2.18" builtins.nixVersion != 1`). Its abort is a page
// of text ending in a Nix stack trace, and its advice (`nix upgrade-nix`,
// or nixos-rebuild) does not apply to a distribution's Nix. So before an
// evaluation, claude-sandbox reads those files as text, without evaluating
// them, compares with the evaluator here and says in one line what to do.
// Conditions it cannot read as a version (a feature test such as
// `builtins ? foo`) are left to nixpkgs' own check, whose abort
// evaluationError recognises and turns into the same error.

// UpgradeNixHint is how to get a Nix that current nixpkgs accepts. Debian
// 12's nix-bin (2.8) is exactly the Nix that cannot.
const UpgradeNixHint = "install a current Nix: Debian 13's nix-bin (Debian 12's is 2.8), " +
	"the upstream installer (https://nixos.org/download) or Lix (https://lix.systems/install)"

// NixTooOldError: the Nix that would evaluate is older than the chosen
// nixpkgs supports.
type NixTooOldError struct {
	Found    string   // the evaluator's version, e.g. "2.8.0"
	Program  string   // the evaluator asked
	Needs    string   // the oldest version the nixpkgs accepts; "" when only features are known
	Features []string // nixpkgs' own words for what is missing, when its check said so
	Nixpkgs  string   // the nixpkgs tree
}

func (e *NixTooOldError) Error() string {
	found := "Nix " + e.Found
	if e.Found == "" {
		found = "the Nix here"
	}
	if e.Program != "" {
		found += " (" + e.Program + ")"
	}
	needs := "Nix " + e.Needs + " or newer"
	if e.Needs == "" {
		needs = "a newer Nix"
		if len(e.Features) > 0 {
			needs += " (" + strings.Join(e.Features, "; ") + ")"
		}
	}
	return fmt.Sprintf("%s is too old for nixpkgs %s, which needs %s", found, e.Nixpkgs, needs)
}

func (e *NixTooOldError) Hint() string {
	return UpgradeNixHint + "; or build from an older nixpkgs with --nixpkgs"
}

// maxNixFile bounds what is read of a nixpkgs file: the real ones are a few
// hundred bytes, and a hostile tree must not make us read gigabytes.
const maxNixFile = 64 << 10

var (
	// nixpkgs' conditions on the evaluator's version, either way round, and
	// lib.versionAtLeast.
	versionCondition = lazyregexp.New(`compareVersions\s+"([^"$\\]+)"\s+(?:builtins\.)?nixVersion` +
		`|compareVersions\s+(?:builtins\.)?nixVersion\s+"([^"$\\]+)"` +
		`|versionAtLeast\s+(?:builtins\.)?nixVersion\s+"([^"$\\]+)"`)
	versionLiteral = lazyregexp.New(`^\s*"([0-9][0-9A-Za-z.+-]*)"\s*$`)
)

// NixpkgsMinimum reads the oldest Nix version the nixpkgs tree at root
// accepts, from lib/minver.nix and lib/minfeatures.nix, without Nix. It is
// "" when the tree states none that can be read as a version.
func NixpkgsMinimum(root string) (string, error) {
	var needs string
	raise := func(v string) {
		if needs == "" || CompareVersions(v, needs) > 0 {
			needs = v
		}
	}
	if src, err := readNixFile(filepath.Join(root, "lib", "minver.nix")); err != nil {
		return "", err
	} else if src != "" {
		if m := versionLiteral.FindStringSubmatch(stripNixComments(src)); m != nil {
			raise(m[1])
		}
	}
	src, err := readNixFile(filepath.Join(root, "lib", "minfeatures.nix"))
	if err != nil {
		return "", err
	}
	for _, m := range versionCondition.FindAllStringSubmatch(stripNixComments(src), -1) {
		for _, v := range m[1:] {
			if v != "" {
				raise(v)
			}
		}
	}
	return needs, nil
}

// readNixFile returns "" for a file that does not exist.
func readNixFile(path string) (string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxNixFile))
	return string(data), err
}

// stripNixComments drops # and /* */ comments outside strings, so that a
// commented-out condition does not count.
func stripNixComments(src string) string {
	var b strings.Builder
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch {
		case c == '"':
			j := i + 1
			for j < len(src) && src[j] != '"' {
				if src[j] == '\\' {
					j++
				}
				j++
			}
			b.WriteString(src[i:min(j+1, len(src))])
			i = j
		case c == '\'' && strings.HasPrefix(src[i:], "''"):
			end := strings.Index(src[i+2:], "''")
			if end < 0 {
				b.WriteString(src[i:])
				return b.String()
			}
			b.WriteString(src[i : i+2+end+2])
			i += 2 + end + 1
		case c == '#':
			for i < len(src) && src[i] != '\n' {
				i++
			}
			b.WriteByte('\n')
		case c == '/' && strings.HasPrefix(src[i:], "/*"):
			end := strings.Index(src[i+2:], "*/")
			if end < 0 {
				return b.String()
			}
			i += 2 + end + 1
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// CompareVersions is Nix's builtins.compareVersions (src/libstore/names.cc):
// components are runs of digits or of other characters between '.' and '-';
// numbers compare as numbers, a missing component is older than a number,
// "pre" is older than anything else, and a word is older than a number.
func CompareVersions(v1, v2 string) int {
	for p1, p2 := 0, 0; p1 < len(v1) || p2 < len(v2); {
		var c1, c2 string
		c1, p1 = nextVersionComponent(v1, p1)
		c2, p2 = nextVersionComponent(v2, p2)
		if componentLess(c1, c2) {
			return -1
		}
		if componentLess(c2, c1) {
			return 1
		}
	}
	return 0
}

func nextVersionComponent(s string, p int) (string, int) {
	for p < len(s) && (s[p] == '.' || s[p] == '-') {
		p++
	}
	start := p
	if p < len(s) && isDigit(s[p]) {
		for p < len(s) && isDigit(s[p]) {
			p++
		}
	} else {
		for p < len(s) && !isDigit(s[p]) && s[p] != '.' && s[p] != '-' {
			p++
		}
	}
	return s[start:p], p
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func componentLess(c1, c2 string) bool {
	n1, ok1 := versionNumber(c1)
	n2, ok2 := versionNumber(c2)
	switch {
	case ok1 && ok2:
		return n1 < n2
	case c1 == "" && ok2:
		return true
	case c1 == "pre" && c2 != "pre":
		return true
	case c2 == "pre":
		return false
	case ok2:
		return true
	case ok1:
		return false
	}
	return c1 < c2
}

func versionNumber(s string) (uint64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, false
		}
		n = n*10 + uint64(s[i]-'0')
	}
	return n, true
}

// evaluatorVersion is what `nix-instantiate --version` said, remembered per
// binary: the same file always gives the same answer.
type evaluatorVersion struct {
	Program string `json:"program"` // the resolved path
	Size    int64  `json:"size"`
	MTime   int64  `json:"mtime"`
	Version string `json:"version"`
}

func (d Dirs) nixVersionFile() string { return filepath.Join(d.Cache, "nix-version.json") }

// EvaluatorVersion is the version of the nix-instantiate on PATH, the
// program every evaluation runs. Asked once per binary, then read from the
// cache.
func (b *Builder) EvaluatorVersion(ctx context.Context) (version, program string, err error) {
	path, err := exec.LookPath("nix-instantiate")
	if err != nil {
		return "", "", &NixMissingError{Program: "nix-instantiate"}
	}
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", path, err
	}
	st, err := os.Stat(resolved)
	if err != nil {
		return "", path, err
	}
	key := evaluatorVersion{Program: resolved, Size: st.Size(), MTime: st.ModTime().UnixNano()}
	var cached evaluatorVersion
	if data, err := os.ReadFile(b.Dirs.nixVersionFile()); err == nil && json.Unmarshal(data, &cached) == nil &&
		cached.Version != "" && cached == (evaluatorVersion{key.Program, key.Size, key.MTime, cached.Version}) {
		return cached.Version, path, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := nixRunner{log: b.Log}.run(ctx, "nix-instantiate", "--version")
	if err != nil {
		return "", path, err
	}
	version = parseNixVersion(res.stdout)
	if version == "" {
		return "", path, fmt.Errorf("nix-instantiate --version printed %q, no version", res.stdout)
	}
	key.Version = version
	data, _ := json.Marshal(key)
	if err := atomicfile.Write(b.Dirs.nixVersionFile(), data, 0o644); err != nil {
		b.Log.Debug().Err(err).Msg("caching the Nix version")
	}
	return version, path, nil
}

// parseNixVersion takes the version from `nix-instantiate (Nix) 2.8.0`, and
// from Lix's `nix-instantiate (Lix, like Nix) 2.91.1`.
func parseNixVersion(out string) string {
	first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	fields := strings.Fields(first)
	if len(fields) == 0 {
		return ""
	}
	v := fields[len(fields)-1]
	if !isDigit(v[0]) {
		return ""
	}
	return v
}

// CheckNixVersion says whether the Nix here can evaluate nixpkgs np, before
// anything evaluates it: nil, a *NixTooOldError, or a *NixMissingError.
// It runs only where an evaluation is about to run; a cache hit never
// gets here.
func (b *Builder) CheckNixVersion(ctx context.Context, np nixgen.Nixpkgs) error {
	needs, err := NixpkgsMinimum(np.Path)
	if err != nil {
		// Unreadable here means unreadable for Nix too; it will say so.
		b.Log.Debug().Err(err).Str("nixpkgs", np.Path).Msg("reading the nixpkgs' minimum Nix version")
		return nil
	}
	if needs == "" {
		return nil
	}
	found, program, err := b.EvaluatorVersion(ctx)
	var missing *NixMissingError
	if errors.As(err, &missing) {
		return err
	}
	if err != nil {
		b.Log.Debug().Err(err).Msg("asking nix-instantiate for its version")
		return nil
	}
	if CompareVersions(found, needs) < 0 {
		return &NixTooOldError{Found: found, Program: program, Needs: needs, Nixpkgs: np.Path}
	}
	return nil
}

var (
	// nixpkgs' default.nix: "This version of Nixpkgs requires Nix >= 2.3.17,
	// please upgrade:" (with lib/minver.nix), or "... requires an
	// implementation of Nix with the following features:", a "- " line per
	// missing feature, and "You are evaluating with Nix 2.8.0, ..." (with
	// lib/minfeatures.nix).
	nixpkgsTooOldByVersion = lazyregexp.New(`This version of Nixpkgs requires Nix >= ([0-9][0-9A-Za-z.+-]*)`)
	nixpkgsEvaluatingWith  = lazyregexp.New(`You are evaluating with Nix ([0-9][0-9A-Za-z.+-]*)`)
)

const nixpkgsTooOldByFeatures = "This version of Nixpkgs requires an implementation of Nix with the following features"

// nixpkgsRefused recognises nixpkgs' own refusal of this Nix in an
// evaluation's log: the conditions CheckNixVersion could not read.
func nixpkgsRefused(tail []string) (*NixTooOldError, bool) {
	e := &NixTooOldError{}
	refused := false
	inFeatures := false
	for _, line := range tail {
		line = strings.TrimSpace(line)
		switch {
		case strings.Contains(line, nixpkgsTooOldByFeatures):
			refused, inFeatures = true, true
		case inFeatures && strings.HasPrefix(line, "- "):
			e.Features = append(e.Features, strings.TrimPrefix(line, "- "))
		case inFeatures && line == "":
		default:
			inFeatures = false
		}
		if m := nixpkgsTooOldByVersion.FindStringSubmatch(line); m != nil {
			refused, e.Needs = true, m[1]
		}
		if m := nixpkgsEvaluatingWith.FindStringSubmatch(line); m != nil {
			e.Found = m[1]
		}
	}
	return e, refused
}
