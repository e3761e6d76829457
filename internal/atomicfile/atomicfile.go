// Package atomicfile writes files that readers see either whole or not at
// all: the cache index, the registry of running sandboxes, trust records.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data through a temporary file and a rename, so a
// killed process leaves at most a stray temporary file, never a truncated
// one. It does not fsync: every reader treats a damaged file as absent
// (a cache miss, a sandbox not running, an approval to give again), and a
// sync would cost milliseconds on the launch path, which registers sandboxes.
func Write(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
