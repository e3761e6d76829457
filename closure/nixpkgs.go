package closure

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
	"github.com/claude-sandbox/claude-sandbox/manifest"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
)

// CompiledNixpkgs is set at link time by the flake build
// (-X github.com/claude-sandbox/claude-sandbox/closure.CompiledNixpkgs=/nix/store/…),
// so `nix run` builds sandboxes against the flake's own pinned nixpkgs.
var CompiledNixpkgs string

// NixpkgsChoice is which nixpkgs the user asked for, before resolution.
type NixpkgsChoice struct {
	Ref    string // a path or a flake reference
	Source string // where Ref came from: "--nixpkgs", "CLAUDE_SANDBOX_NIXPKGS", "compiled-in", "NIX_PATH", "flake registry"
}

// ChooseNixpkgs applies the precedence in DESIGN.md: flag, environment,
// compiled-in pin, <nixpkgs> from NIX_PATH, the flake registry.
func ChooseNixpkgs(flag string, getenv func(string) string) NixpkgsChoice {
	switch {
	case flag != "":
		return NixpkgsChoice{flag, "--nixpkgs"}
	case getenv("CLAUDE_SANDBOX_NIXPKGS") != "":
		return NixpkgsChoice{getenv("CLAUDE_SANDBOX_NIXPKGS"), "CLAUDE_SANDBOX_NIXPKGS"}
	case CompiledNixpkgs != "":
		return NixpkgsChoice{CompiledNixpkgs, "compiled-in"}
	}
	if p := nixPathEntry(getenv("NIX_PATH"), "nixpkgs"); p != "" {
		return NixpkgsChoice{p, "NIX_PATH"}
	}
	return NixpkgsChoice{"flake:nixpkgs", "flake registry"}
}

// nixPathEntry finds what <name> means in a NIX_PATH, without Nix.
func nixPathEntry(nixPath, name string) string {
	for _, entry := range strings.Split(nixPath, ":") {
		if prefix, value, ok := strings.Cut(entry, "="); ok {
			if prefix == name {
				return value
			}
			continue
		}
		if entry != "" && !strings.Contains(entry, "://") {
			if st, err := os.Stat(filepath.Join(entry, name)); err == nil && st.IsDir() {
				return filepath.Join(entry, name)
			}
		}
	}
	return ""
}

// isPathRef tells a filesystem path from a flake reference.
func isPathRef(ref string) bool {
	return strings.HasPrefix(ref, "/") || strings.HasPrefix(ref, "./") || strings.HasPrefix(ref, "../") ||
		ref == "." || ref == ".." || strings.HasPrefix(ref, "~/")
}

// ResolveNixpkgs turns a choice into an importable path and an identity for
// the cache key. A path costs a few stat calls; a flake reference costs one
// `nix flake metadata` the first time and is then read from the cache, so the
// warm path runs no Nix.
func (b *Builder) ResolveNixpkgs(ctx context.Context, choice NixpkgsChoice, refresh bool) (nixgen.Nixpkgs, error) {
	if isPathRef(choice.Ref) {
		return resolvePath(choice.Ref)
	}
	return resolveFlakeRef(ctx, choice.Ref, b.Dirs, refresh, b.runner())
}

func resolvePath(ref string) (nixgen.Nixpkgs, error) {
	if strings.HasPrefix(ref, "~/") {
		home, _ := os.UserHomeDir()
		ref = filepath.Join(home, ref[2:])
	}
	abs, err := filepath.Abs(ref)
	if err != nil {
		return nixgen.Nixpkgs{}, &NixpkgsError{Ref: ref, Detail: err.Error()}
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nixgen.Nixpkgs{}, &NixpkgsError{Ref: ref, Detail: "does not exist"}
	}
	st, err := os.Stat(real)
	if err != nil || !st.IsDir() {
		return nixgen.Nixpkgs{}, &NixpkgsError{Ref: ref, Detail: "not a directory"}
	}
	if _, err := os.Stat(filepath.Join(real, "default.nix")); err != nil {
		return nixgen.Nixpkgs{}, &NixpkgsError{Ref: ref, Detail: "has no default.nix, so it is not a nixpkgs tree"}
	}
	if strings.HasPrefix(real, manifest.StoreDir+"/") {
		// A store path names its content: that is the whole identity.
		return nixgen.Nixpkgs{Path: real, Identity: "store:" + real}, nil
	}
	return nixgen.Nixpkgs{Path: real, Identity: "path:" + real + ":" + localTreeIdentity(real)}, nil
}

// maxFingerprintFiles bounds the walk. A full nixpkgs checkout (~45,000
// files) is past it; there the git commit stands in, and an uncommitted
// edit to such a checkout needs --rebuild.
const maxFingerprintFiles = 4000

// localTreeIdentity changes when a local nixpkgs tree changes, cheaply
// enough for every launch. A git checkout too large to walk is recognised
// from its index's header before any walk starts: walking 4,000 of a real
// checkout's files to find that out cost every launch tens of milliseconds.
func localTreeIdentity(root string) string {
	repo := findGitRepo(root)
	if repo.indexEntries() > maxFingerprintFiles {
		return "git:" + repo.head()
	}
	if sum, complete := walkFingerprint(root); complete {
		return "tree:" + sum
	}
	return "git:" + repo.head()
}

// walkFingerprint hashes every entry's name, mode, size and mtime; complete
// is false past maxFingerprintFiles.
func walkFingerprint(root string) (sum string, complete bool) {
	h := sha256.New()
	count := 0
	complete = true
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		if count++; count > maxFingerprintFiles {
			complete = false
			return fs.SkipAll
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00%d\n", p[len(root):], info.Mode(), info.Size(), info.ModTime().UnixNano())
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))[:32], complete
}

// gitRepo is the git directory holding a tree, read without running git;
// the zero value stands for "not in a git checkout".
type gitRepo struct{ dir, commonDir string }

// findGitRepo looks for .git in dir and its parents. A linked worktree's
// .git is a file naming its git directory, whose commondir holds the refs.
func findGitRepo(dir string) gitRepo {
	for d := dir; ; d = filepath.Dir(d) {
		dotGit := filepath.Join(d, ".git")
		if st, err := os.Stat(dotGit); err == nil {
			repo := gitRepo{dir: dotGit, commonDir: dotGit}
			if !st.IsDir() {
				data, _ := os.ReadFile(dotGit)
				target, ok := strings.CutPrefix(strings.TrimSpace(string(data)), "gitdir: ")
				if !ok {
					return gitRepo{}
				}
				if !filepath.IsAbs(target) {
					target = filepath.Join(d, target)
				}
				repo = gitRepo{dir: target, commonDir: target}
				if common, err := os.ReadFile(filepath.Join(target, "commondir")); err == nil {
					repo.commonDir = filepath.Join(target, strings.TrimSpace(string(common)))
				}
			}
			return repo
		}
		if d == filepath.Dir(d) {
			return gitRepo{}
		}
	}
}

// indexEntries reads how many files git tracks from the index header
// ("DIRC", version, entry count), or 0 when there is no readable index.
func (r gitRepo) indexEntries() int {
	if r.dir == "" {
		return 0
	}
	f, err := os.Open(filepath.Join(r.dir, "index"))
	if err != nil {
		return 0
	}
	defer f.Close()
	var header [12]byte
	if _, err := io.ReadFull(f, header[:]); err != nil || string(header[:4]) != "DIRC" {
		return 0
	}
	return int(binary.BigEndian.Uint32(header[8:]))
}

// head is the checked-out commit: HEAD itself when detached, else the
// branch's loose ref or its line in packed-refs (where `git gc` moves it).
func (r gitRepo) head() string {
	if r.dir == "" {
		return "unknown"
	}
	data, err := os.ReadFile(filepath.Join(r.dir, "HEAD"))
	if err != nil {
		return "unknown"
	}
	ref, isRef := strings.CutPrefix(strings.TrimSpace(string(data)), "ref: ")
	if !isRef {
		return ref
	}
	if rev, err := os.ReadFile(filepath.Join(r.commonDir, ref)); err == nil {
		return strings.TrimSpace(string(rev))
	}
	packed, _ := os.ReadFile(filepath.Join(r.commonDir, "packed-refs"))
	for _, line := range strings.Split(string(packed), "\n") {
		if rev, name, ok := strings.Cut(line, " "); ok && name == ref {
			return rev
		}
	}
	return ref
}

type resolvedRef struct {
	Ref      string `json:"ref"`
	Path     string `json:"path"`
	Identity string `json:"identity"`
}

func resolveFlakeRef(ctx context.Context, ref string, dirs Dirs, refresh bool, runner nixRunner) (nixgen.Nixpkgs, error) {
	sum := sha256.Sum256([]byte(ref))
	cacheFile := filepath.Join(dirs.nixpkgsRefs(), hex.EncodeToString(sum[:16])+".json")
	if !refresh {
		var cached resolvedRef
		if data, err := os.ReadFile(cacheFile); err == nil && json.Unmarshal(data, &cached) == nil &&
			cached.Ref == ref && cached.Path != "" && cached.Identity != "" {
			if _, err := os.Stat(filepath.Join(cached.Path, "default.nix")); err == nil {
				return nixgen.Nixpkgs{Path: cached.Path, Identity: cached.Identity}, nil
			}
		}
	}
	res, err := runner.run(ctx, "nix", "--extra-experimental-features", "nix-command flakes",
		"flake", "metadata", "--json", "--", ref)
	if err != nil {
		if be, ok := err.(*BuildError); ok {
			return nixgen.Nixpkgs{}, &NixpkgsError{Ref: ref, Detail: be.Message}
		}
		return nixgen.Nixpkgs{}, err
	}
	var meta struct {
		Path   string          `json:"path"`
		Locked json.RawMessage `json:"locked"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &meta); err != nil || meta.Path == "" {
		return nixgen.Nixpkgs{}, &NixpkgsError{Ref: ref, Detail: "nix flake metadata gave no store path"}
	}
	var locked map[string]any
	_ = json.Unmarshal(meta.Locked, &locked)
	identity := "flake:" + meta.Path
	if nar, ok := locked["narHash"].(string); ok && nar != "" {
		identity = "flake:" + nar
	}
	out := resolvedRef{Ref: ref, Path: meta.Path, Identity: identity}
	data, _ := json.Marshal(out)
	if err := atomicfile.Write(cacheFile, data, 0o644); err != nil {
		return nixgen.Nixpkgs{}, fmt.Errorf("caching nixpkgs resolution: %w", err)
	}
	return nixgen.Nixpkgs{Path: out.Path, Identity: out.Identity}, nil
}
