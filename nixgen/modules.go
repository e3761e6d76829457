package nixgen

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Module is an extra NixOS module file (--module), named by its real path
// and identified by its content: editing the file changes the key.
type Module struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

const maxModuleSize = 1 << 20

// ModuleError is a --module argument that cannot be used.
type ModuleError struct {
	Path   string
	Reason string
}

func (e *ModuleError) Error() string { return fmt.Sprintf("module %q: %s", e.Path, e.Reason) }
func (e *ModuleError) Hint() string {
	return "--module takes a NixOS module file (FILE.nix), for the container and vm backends"
}

// LoadModules resolves and hashes module files. It is the one function in
// this package that reads files: a module's content is a build input.
func LoadModules(paths []string) ([]Module, error) {
	var out []Module
	seen := map[string]bool{}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, &ModuleError{p, err.Error()}
		}
		real, err := filepath.EvalSymlinks(abs)
		if err != nil {
			return nil, &ModuleError{p, "does not exist"}
		}
		if !strings.HasSuffix(real, ".nix") {
			return nil, &ModuleError{p, "is not a .nix file"}
		}
		f, err := os.Open(real)
		if err != nil {
			return nil, &ModuleError{p, err.Error()}
		}
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			f.Close()
			return nil, &ModuleError{p, "is not a regular file"}
		}
		h := sha256.New()
		n, err := io.Copy(h, io.LimitReader(f, maxModuleSize+1))
		f.Close()
		if err != nil {
			return nil, &ModuleError{p, err.Error()}
		}
		if n > maxModuleSize {
			return nil, &ModuleError{p, "larger than 1 MiB"}
		}
		if seen[real] {
			continue
		}
		seen[real] = true
		out = append(out, Module{Path: real, SHA256: hex.EncodeToString(h.Sum(nil))})
	}
	return out, nil
}
