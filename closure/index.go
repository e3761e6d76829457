package closure

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

const entrySchema = 1

// Entry is one cached closure. It is written last, after the store path is
// realised and rooted, so its presence means the closure was complete.
type Entry struct {
	Schema   int       `json:"schema"`
	Key      string    `json:"key"`
	OutPath  string    `json:"outPath"`
	DrvPath  string    `json:"drvPath"`
	Backend  string    `json:"backend"`
	Packages []string  `json:"packages"`
	Nixpkgs  string    `json:"nixpkgs"`
	Created  time.Time `json:"created"`
}

var errStale = errors.New("stale cache entry")

// readEntry loads and checks an index entry. Any damage (truncation, a
// different key, a collected store path, a missing GC root) reads as a miss:
// the caller rebuilds, it never fails on it.
func readEntry(dirs Dirs, key string) (*Entry, error) {
	data, err := os.ReadFile(dirs.entryFile(key))
	if err != nil {
		return nil, err
	}
	var e Entry
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("%w: %v", errStale, err)
	}
	if e.Schema != entrySchema || e.Key != key || !isStorePath(e.OutPath) {
		return nil, fmt.Errorf("%w: does not describe key %s", errStale, key)
	}
	if _, err := os.Stat(manifest.Of(e.OutPath)); err != nil {
		return nil, fmt.Errorf("%w: %s is gone from the store", errStale, e.OutPath)
	}
	if target, err := os.Readlink(dirs.gcroot(key)); err != nil || target != e.OutPath {
		return nil, fmt.Errorf("%w: GC root missing", errStale)
	}
	return &e, nil
}

func writeEntry(dirs Dirs, e *Entry) error {
	data, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(dirs.entryFile(e.Key), append(data, '\n'), 0o644)
}

// touch records a use, for `gc` to drop the least recently used.
func touch(dirs Dirs, key string) {
	now := time.Now()
	_ = os.Chtimes(dirs.entryFile(key), now, now)
}

// Entries lists the valid cache entries with their last use.
func Entries(dirs Dirs) ([]ListedEntry, error) {
	files, err := os.ReadDir(dirs.index())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []ListedEntry
	for _, f := range files {
		key, ok := strings.CutSuffix(f.Name(), ".json")
		if !ok || strings.HasPrefix(key, ".") {
			continue
		}
		e, err := readEntry(dirs, key)
		if err != nil {
			continue
		}
		info, err := f.Info()
		if err != nil {
			continue
		}
		out = append(out, ListedEntry{Entry: *e, LastUsed: info.ModTime()})
	}
	return out, nil
}

// ListedEntry is an entry with its last-use time.
type ListedEntry struct {
	Entry
	LastUsed time.Time `json:"lastUsed"`
}

func isStorePath(p string) bool {
	return strings.HasPrefix(p, manifest.StoreDir+"/") && filepath.Clean(p) == p &&
		!strings.Contains(strings.TrimPrefix(p, manifest.StoreDir+"/"), "/")
}
