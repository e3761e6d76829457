// Package nixgate is the sandbox's Nix daemon gateway: it serves the
// worker protocol on a socket bound into a sandbox, forwards to the host's
// Nix daemon only what its policy allows, answers everything else with a
// Nix error that names the rule and how to allow it, and records every
// decision in the sandbox's session log. It also probes the host daemon
// (does it sandbox builds, does it trust this user) and explains what the
// gateway will therefore allow.
//
// It owns the policy. The protocol itself (handshake, request and reply
// formats, relaying) belongs to nixdaemon; where the socket lives, when the
// gateway starts and stops, and which flags set its Config belong to the
// supervisor and the launch. It never binds or hands out the host socket.
package nixgate
