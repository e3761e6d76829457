// Package closure turns a generated request into a realised store path and
// remembers it. It owns the cache index, the per-key build lock, the GC roots
// and every Nix process claude-sandbox runs; on a cache hit it runs none.
// It does not know how a sandbox is launched.
package closure
