// Package nixdaemon is a client for the Nix daemon's worker protocol (the
// unix:// store), built on go-nix's pkg/wire: handshake and version
// negotiation, the stderr/log/activity channel, and the few operations
// realisation needs (set-options, is-valid-path, query-path-info,
// query-missing, build-paths, temp and indirect GC roots).
//
// It owns only the conversation on one socket. It does not evaluate Nix,
// run the nix CLI, render progress, or decide where GC roots live: callers
// (closure, the progress display) do that with what it returns.
package nixdaemon
