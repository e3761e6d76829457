// Package manifest reads the launch manifest every sandbox closure carries
// (share/claude-sandbox/manifest.json). It is the whole contract between what
// Nix built and what the launcher runs: launch never evaluates Nix, so every
// store path it needs must be named here, and is checked before use.
package manifest

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
)

// Schema is the manifest version this binary understands.
const Schema = 1

// RelPath is where a closure keeps its manifest.
const RelPath = "share/claude-sandbox/manifest.json"

const maxSize = 1 << 20

// Manifest is what the templates write. Paths are store paths. The common
// fields serve every backend; each backend adds what only it needs (the
// bubblewrap fields inline for schema 1, Container and VM as sections).
type Manifest struct {
	Schema    int      `json:"schema"`
	Backend   string   `json:"backend"`
	Env       string   `json:"env"`
	Path      []string `json:"path"`
	Shell     string   `json:"shell"`
	UsrBinEnv string   `json:"usrBinEnv"`
	Claude    string   `json:"claude"`
	HostEtc   []string `json:"hostEtc"`
	Packages  []string `json:"packages"`

	// bubblewrap
	Bwrap string `json:"bwrap,omitempty"`
	NixLd NixLd  `json:"nixLd"`

	Container *Container `json:"container,omitempty"`
	VM        *VM        `json:"vm,omitempty"`
}

// NixLd describes the loader shim that lets prebuilt binaries run.
type NixLd struct {
	Loader string `json:"loader"`
	// Path is where prebuilt binaries look for their loader, and so where
	// Loader goes: /lib64/ld-linux-x86-64.so.2 on x86_64,
	// /lib/ld-linux-aarch64.so.1 on aarch64 (the closure's platform says).
	Path            string `json:"path"`
	NixLd           string `json:"NIX_LD"`
	NixLdLibraryDir string `json:"NIX_LD_LIBRARY_PATH"`
}

// loaderPath is an FHS loader location: a file named ld* directly in /lib,
// /lib32 or /lib64. Nothing else may be shadowed by the loader.
var loaderPath = lazyregexp.New(`^/lib(32|64)?/ld[A-Za-z0-9._-]*$`)

func (n NixLd) validate() error {
	if err := storePaths(map[string]string{
		"nixLd.loader": n.Loader, "nixLd.NIX_LD": n.NixLd, "nixLd.NIX_LD_LIBRARY_PATH": n.NixLdLibraryDir,
	}); err != nil {
		return err
	}
	if !loaderPath.MatchString(n.Path) || filepath.Clean(n.Path) != n.Path {
		return fmt.Errorf("nixLd.path: %q is not a loader's place (/lib64/ld…)", n.Path)
	}
	return nil
}

// Of returns the manifest path inside a closure.
func Of(outPath string) string { return filepath.Join(outPath, RelPath) }

// Load reads and validates the manifest of a closure.
func Load(outPath string) (*Manifest, error) {
	f, err := os.Open(Of(outPath))
	if err != nil {
		return nil, fmt.Errorf("reading sandbox manifest: %w", err)
	}
	defer f.Close()
	var m Manifest
	dec := json.NewDecoder(io.LimitReader(f, maxSize))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("parsing sandbox manifest %s: %w", Of(outPath), err)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("sandbox manifest %s: %w", Of(outPath), err)
	}
	return &m, nil
}

// Validate checks the schema and that every path is a store path, so a
// damaged manifest cannot make the launcher bind or run a host file.
func (m *Manifest) Validate() error {
	if m.Schema != Schema {
		return fmt.Errorf("schema %d, this claude-sandbox reads schema %d", m.Schema, Schema)
	}
	if err := storePaths(map[string]string{
		"env": m.Env, "shell": m.Shell, "usrBinEnv": m.UsrBinEnv, "claude": m.Claude,
	}); err != nil {
		return err
	}
	for _, p := range m.Path {
		if err := storePath(p); err != nil {
			return fmt.Errorf("path: %w", err)
		}
	}
	for _, name := range m.HostEtc {
		if name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
			return fmt.Errorf("hostEtc: %q is not a plain /etc entry name", name)
		}
	}
	switch m.Backend {
	case "bubblewrap":
		return m.validateBubblewrap()
	case "container":
		if m.Container == nil {
			return fmt.Errorf("container backend without a container section")
		}
		return m.Container.validate()
	case "vm":
		if m.VM == nil {
			return fmt.Errorf("vm backend without a vm section")
		}
		return m.VM.validate()
	case "":
		return fmt.Errorf("no backend")
	default:
		return fmt.Errorf("unknown backend %q", m.Backend)
	}
}

func (m *Manifest) validateBubblewrap() error {
	if err := storePath(m.Bwrap); err != nil {
		return fmt.Errorf("bwrap: %w", err)
	}
	return m.NixLd.validate()
}

// storePaths checks named required store paths.
func storePaths(fields map[string]string) error {
	for field, p := range fields {
		if err := storePath(p); err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
	}
	return nil
}

// StoreDir is where Nix keeps its store. A non-default store is not supported.
const StoreDir = "/nix/store"

func storePath(p string) error {
	if p == "" {
		return fmt.Errorf("missing")
	}
	clean := filepath.Clean(p)
	if clean != p || !strings.HasPrefix(p, StoreDir+"/") || strings.Contains(p, "/../") {
		return fmt.Errorf("%q is not a store path", p)
	}
	return nil
}
