// Command claude-sandbox runs Claude Code in a sandbox built from nixpkgs.
package main

import (
	"os"
	"path/filepath"

	"github.com/claude-sandbox/claude-sandbox/launch/backends"
)

func main() {
	// Inside a sandbox this binary may play a part of its backend's.
	if helper := backends.Helper(os.Args[0]); helper != nil {
		os.Exit(helper(os.Args[1:]))
	}
	os.Exit(run(entryArgs(os.Args)))
}

// entryArgs reads the backend from the name the program was started by, as
// the original's separate commands had it: claude-sandbox-<backend> ARGS is
// claude-sandbox --backend=<backend> ARGS.
func entryArgs(argv []string) []string {
	if backend, ok := backends.FromEntryName(filepath.Base(argv[0])); ok {
		return append([]string{"--backend=" + backend}, argv[1:]...)
	}
	return argv[1:]
}
