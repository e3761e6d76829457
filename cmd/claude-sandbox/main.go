// Command claude-sandbox runs Claude Code in a sandbox built from nixpkgs.
package main

import (
	"os"
	"path/filepath"

	"github.com/claude-sandbox/claude-sandbox/launch"
)

func main() {
	// Inside a container this binary is the init (launch/container_init.go).
	if launch.IsContainerInit(os.Args[0]) {
		os.Exit(launch.ContainerInit(os.Args[1:]))
	}
	os.Exit(run(entryArgs(os.Args)))
}

// entryArgs reads the backend from the name the program was started by, as
// the original's separate commands had it: claude-sandbox-container ARGS is
// claude-sandbox --backend=container ARGS (and claude-sandbox-vm likewise).
func entryArgs(argv []string) []string {
	switch filepath.Base(argv[0]) {
	case "claude-sandbox-container":
		return append([]string{"--backend=container"}, argv[1:]...)
	case "claude-sandbox-vm":
		return append([]string{"--backend=vm"}, argv[1:]...)
	}
	return argv[1:]
}
