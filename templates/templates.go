// Package templates owns the Nix files that turn a request into a sandbox
// closure. They are embedded so the binary and the flake use the very same
// bytes, and are written to a content-addressed directory before evaluation
// because Nix can only import files that exist on disk.
package templates

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

//go:embed *.nix
var files embed.FS

// Entry is the file every generated expression imports.
const Entry = "entry.nix"

var digestOnce = sync.OnceValue(func() string {
	names := Names()
	h := sha256.New()
	for _, name := range names {
		data, _ := files.ReadFile(name)
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))
})

// Digest identifies the template bundle; it is part of every cache key, so a
// changed template never reuses a closure built from an older one.
func Digest() string { return digestOnce() }

// Names lists the embedded template files, sorted.
func Names() []string {
	entries, _ := fs.ReadDir(files, ".")
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// Materialise makes sure the bundle exists under root/<digest> and returns
// that directory. It is written to a temporary sibling and renamed into place,
// so a concurrent or interrupted run never leaves a half-written bundle that
// a later evaluation would trust.
func Materialise(root string) (string, error) {
	dir := filepath.Join(root, Digest()[:32])
	if complete(dir) {
		return dir, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("creating template directory: %w", err)
	}
	tmp, err := os.MkdirTemp(root, ".tmp-")
	if err != nil {
		return "", fmt.Errorf("creating template directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	for _, name := range Names() {
		data, _ := files.ReadFile(name)
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o444); err != nil {
			return "", fmt.Errorf("writing template %s: %w", name, err)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	// A damaged bundle (edited by hand, or from a crash on a filesystem
	// without atomic rename) is replaced rather than trusted.
	if _, err := os.Lstat(dir); err == nil {
		_ = os.RemoveAll(dir)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another process won the race; its copy has the same digest.
		if complete(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("installing templates into %s: %w", dir, err)
	}
	return dir, nil
}

// complete checks the bundle byte for byte: the directory name alone does not
// prove a user (or a crash) left it intact.
func complete(dir string) bool {
	for _, name := range Names() {
		want, _ := files.ReadFile(name)
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != string(want) {
			return false
		}
	}
	return true
}
