package closure

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Verify checks a cached closure against the store itself (the daemon's
// validity, not just files on disk). `build` uses it; a launch trusts the
// cheaper checks in Lookup.
func (b *Builder) Verify(ctx context.Context, c *Closure) (bool, error) {
	client, err := b.dialDaemon(ctx, nil)
	if errors.Is(err, errNoDaemonClient) {
		_, err := b.runner().run(ctx, "nix-store", "--check-validity", c.OutPath)
		var be *BuildError
		if errors.As(err, &be) {
			return false, nil
		}
		return err == nil, err
	}
	if err != nil {
		return false, err
	}
	defer client.Close()
	return client.IsValidPath(ctx, c.OutPath)
}

// ClosureSize sums the NAR sizes of everything outPath needs at run time.
func (b *Builder) ClosureSize(ctx context.Context, outPath string) (uint64, error) {
	sizes, err := b.closureSizes(ctx, outPath)
	var total uint64
	for _, n := range sizes {
		total += n
	}
	return total, err
}

// Remove drops a cache entry, its GC root and its generated expression.
// The store paths stay until Nix's collector runs.
func (b *Builder) Remove(key string) error {
	var errs []error
	for _, p := range []string{b.Dirs.entryFile(key), b.Dirs.gcroot(key), b.Dirs.exprFile(key), b.Dirs.lockFile(key)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Prune removes the entries last used before olderThan ago (zero: no age
// limit) and all but the keep most recently used (negative: no count
// limit), plus damaged entries and roots without an entry. It returns what
// it removed.
func (b *Builder) Prune(olderThan time.Duration, keep int) ([]ListedEntry, error) {
	entries, err := Entries(b.Dirs)
	if err != nil {
		return nil, err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].LastUsed.After(entries[j].LastUsed) })
	var removed []ListedEntry
	live := map[string]bool{}
	for i, e := range entries {
		tooOld := olderThan > 0 && time.Since(e.LastUsed) > olderThan
		tooMany := keep >= 0 && i >= keep
		if tooOld || tooMany {
			if err := b.Remove(e.Key); err != nil {
				return removed, err
			}
			removed = append(removed, e)
			continue
		}
		live[e.Key] = true
	}
	// Whatever is left in the index or roots without a valid entry is debris
	// of killed or damaged runs.
	for _, dir := range []string{b.Dirs.index(), b.Dirs.gcroots()} {
		files, _ := os.ReadDir(dir)
		for _, f := range files {
			key := strings.TrimSuffix(f.Name(), ".json")
			if !live[key] {
				_ = os.Remove(dir + "/" + f.Name())
			}
		}
	}
	return removed, nil
}

// ParseAge reads durations like 30d, 12h, 90m.
func ParseAge(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a number of days", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a duration (use e.g. 30d, 12h)", s)
	}
	return d, nil
}
