package launch

import (
	"context"
	"fmt"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// Plan decides how the sandbox starts without starting it: the invocation
// that --dry-run prints and that Start runs.
func Plan(m *manifest.Manifest, rt *Runtime) (*Invocation, error) {
	switch m.Backend {
	case "bubblewrap":
		return Bubblewrap(m, rt)
	case "container":
		return planContainer(m, rt)
	case "vm":
		return planVM(m, rt)
	}
	return nil, fmt.Errorf("unknown backend %q in the manifest", m.Backend)
}

// Start runs the sandbox. bubblewrap and container replace this process
// (their exit status is ours); vm supervises QEMU and returns an
// *ExitStatusError carrying the guest command's status.
func Start(ctx context.Context, m *manifest.Manifest, rt *Runtime) error {
	switch m.Backend {
	case "bubblewrap":
		if err := CheckUserNamespaces(rt.euid()); err != nil {
			return err
		}
		inv, err := Bubblewrap(m, rt)
		if err != nil {
			return err
		}
		return &StartError{Err: Exec(inv)}
	case "container":
		return startContainer(ctx, m, rt)
	case "vm":
		return startVM(ctx, m, rt)
	}
	return fmt.Errorf("unknown backend %q in the manifest", m.Backend)
}

// StartError: the sandbox program could not be executed at all.
type StartError struct{ Err error }

func (e *StartError) Error() string { return e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }
func (e *StartError) Hint() string  { return "the closure may be damaged: retry with --rebuild" }

// ExitStatusError carries a sandboxed command's non-zero exit status when
// this process supervised it instead of exec'ing it.
type ExitStatusError struct{ Code int }

func (e *ExitStatusError) Error() string {
	return fmt.Sprintf("the sandboxed command exited with status %d", e.Code)
}
