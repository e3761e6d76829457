package launch

import (
	"context"
	"fmt"
)

// Enter opens a shell (or runs rt.Command) inside a running sandbox, with
// the sandbox's environment and a working directory that exists inside.
func Enter(ctx context.Context, rec *Record, rt *Runtime) error {
	switch rec.Backend {
	case "bubblewrap":
		return enterBubblewrap(ctx, rec, rt)
	case "container":
		return enterContainer(ctx, rec, rt)
	case "vm":
		return enterVM(ctx, rec, rt)
	}
	return fmt.Errorf("unknown backend %q in the sandbox record", rec.Backend)
}

// Stop ends a running sandbox: gracefully first, then by force.
func Stop(ctx context.Context, rec *Record) error {
	switch rec.Backend {
	case "bubblewrap":
		return stopBubblewrap(ctx, rec)
	case "container":
		return stopContainer(ctx, rec)
	case "vm":
		return stopVM(ctx, rec)
	}
	return fmt.Errorf("unknown backend %q in the sandbox record", rec.Backend)
}
