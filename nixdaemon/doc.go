// Package nixdaemon speaks the Nix daemon's worker protocol (the unix://
// store), built on go-nix's pkg/wire. As a client: handshake and version
// negotiation, the stderr/log/activity channel, and the operations
// realisation needs (set-options, is-valid-path, query-path-info,
// query-missing, build-paths, nar-from-path, temp and indirect GC roots).
// As a server, for the sandbox's gateway: the client handshake, every
// request of protocols 1.21–1.38 parsed as daemon.cc reads it, stderr
// messages and errors in both formats, and Relay, which serves one client
// and forwards what a decision function allows to one daemon connection.
//
// It owns only conversations on sockets. It does not decide what a client
// may do (the gateway's policy, package nixgate), evaluate Nix, run the nix
// CLI, render progress, or decide where GC roots live: callers do that with
// what it returns.
package nixdaemon
