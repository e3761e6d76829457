package doctor

import (
	"context"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/launch"
)

// checkProtection says what a launch keeps from being changed inside (the
// list is launch's), and what the configuration leaves writable.
func checkProtection(_ context.Context, env *Env) Check {
	c := Check{ID: "protect", Title: "files the host runs by itself"}
	rt := &launch.Runtime{Protect: env.Protect, Unprotect: env.Unprotect}
	protected, writable := launch.ProtectedNames(rt)
	if !env.Protect {
		c.Status = Warn
		c.Detail = "not protected (protect = false): a sandbox can change Claude Code's settings and hooks, .envrc, .vscode/, git's hooks and what else the host runs by itself"
		c.Fix = "remove protect = false from your configuration (or --protect=false from the command), and leave single paths writable with unprotect = [...]"
		return c
	}
	c.Status = OK
	c.Detail = "read-only inside bubblewrap and container sandboxes (not yet the vm backend's): " + strings.Join(protected, ", ") + "; a missing one is held by an empty placeholder while a sandbox runs"
	if len(writable) > 0 {
		c.Detail += "; left writable by your configuration: " + strings.Join(writable, ", ")
	}
	return c
}
