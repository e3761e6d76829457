package launch

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Exec replaces this process with the sandbox, so the sandbox's exit status
// is ours and no claude-sandbox process lingers beside it.
func Exec(inv *Invocation) error {
	if err := placeFiles(inv.Files); err != nil {
		return fmt.Errorf("starting %s: %w", inv.Path, err)
	}
	err := unix.Exec(inv.Path, inv.Args, inv.Env)
	return fmt.Errorf("starting %s: %w", inv.Path, err)
}
