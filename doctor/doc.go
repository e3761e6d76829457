// Package doctor checks whether this machine can build and run each
// sandbox backend, by trying the real thing where that is cheap (a Nix
// daemon handshake, adding a file to the store, starting a tiny bwrap
// sandbox, booting a guest kernel under KVM for a few seconds) rather than
// guessing from files. Each check says what it found and, when something
// is wrong, the fix.
//
// It only looks: it changes nothing on the machine beyond a fixed,
// content-addressed probe file in the Nix store.
package doctor
