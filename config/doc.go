// Package config owns claude-sandbox's configuration files — the user's
// ($XDG_CONFIG_HOME/claude-sandbox/config.toml) and a project's
// (claude-sandbox.toml or .claude-sandbox.toml in the project directory) —
// how their settings merge, which project settings widen the sandbox's
// access, and the trust store that records the user's approval of a
// project file by content hash (as direnv's `allow` does).
//
// It reads files and writes only the trust store. It does not know about
// flags (the command layer maps settings onto them), never runs Nix and
// never starts a sandbox.
package config
