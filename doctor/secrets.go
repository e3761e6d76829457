package doctor

import (
	"context"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/secrets"
)

// secretChecks are one line per configured secret: its source's health
// and the hosts it may be sent to, never its value. Command sources run,
// as a launch would run them, so a broken `pass` entry shows here first.
func secretChecks(ctx context.Context, env *Env) []Check {
	var out []Check
	for _, h := range secrets.Check(ctx, env.Secrets, secrets.Options{LookupEnv: lookupOf(env.Getenv)}) {
		c := Check{ID: "secret:" + h.Name, Title: "secret " + h.Variable, Status: OK}
		where := h.Source
		if h.BuiltIn {
			where += ", built in"
		}
		c.Detail = where + " → " + strings.Join(h.Hosts, ", ")
		if h.Bodies {
			c.Detail += " (headers and bodies)"
		}
		switch h.Status {
		case secrets.Absent:
			c.Status, c.Detail = None, "not set on this host ("+where+"); the sandbox will not have it"
		case secrets.Failed:
			c.Status = Warn
			c.Detail += ": " + h.Problem
			c.Fix = "fix the source (" + h.Source + "); until then " + h.Variable + " is not set in the sandbox"
		default:
			c.Detail = "ok: " + c.Detail + "; the sandbox holds a placeholder"
		}
		out = append(out, c)
	}
	return out
}

func lookupOf(getenv func(string) string) func(string) (string, bool) {
	if getenv == nil {
		return nil
	}
	return func(name string) (string, bool) {
		v := getenv(name)
		return v, v != ""
	}
}
