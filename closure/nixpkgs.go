package closure

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
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
	return nixgen.Nixpkgs{Path: real, Identity: "path:" + real + ":" + treeFingerprint(real)}, nil
}

// maxFingerprintFiles bounds the walk. A full nixpkgs checkout (~45,000
// files) is past it; there the git revision stands in, and an uncommitted
// edit to such a checkout needs --rebuild.
const maxFingerprintFiles = 4000

// treeFingerprint changes when a file in a small local tree changes (its
// size or mtime), cheaply enough for every launch.
func treeFingerprint(root string) string {
	h := sha256.New()
	count := 0
	complete := true
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
		rel, _ := filepath.Rel(root, p)
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00%d\n", rel, info.Mode(), info.Size(), info.ModTime().UnixNano())
		return nil
	})
	if !complete {
		h.Reset()
		fmt.Fprintf(h, "git:%s\n", gitHead(root))
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// gitHead reads the checked-out commit without running git.
func gitHead(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		gitDir := filepath.Join(d, ".git")
		if head, err := os.ReadFile(filepath.Join(gitDir, "HEAD")); err == nil {
			ref, isRef := strings.CutPrefix(strings.TrimSpace(string(head)), "ref: ")
			if !isRef {
				return ref
			}
			if rev, err := os.ReadFile(filepath.Join(gitDir, ref)); err == nil {
				return strings.TrimSpace(string(rev))
			}
			return ref
		}
		if d == filepath.Dir(d) {
			return "unknown"
		}
	}
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
