// Package launch starts a sandbox from a closure's manifest and this run's
// choices (project, network, host environment). It reads only the manifest
// and the host, never evaluates Nix, and owns the environment policy: what
// crosses from the host into the sandbox is decided here and nowhere else.
package launch
