package secrets

import (
	"context"
	"fmt"
	"strings"
)

// Health is one secret as doctor shows it: never its value.
type Health struct {
	Name     string
	Variable string
	Source   string // "env NAME", "command pass show x", "file /run/agenix/x"
	Hosts    []string
	Bodies   bool
	BuiltIn  bool
	Status   Status
	Problem  string // Failed: why
}

// Check resolves every binding, as a launch would, and reports each one's
// health; the values are dropped. Command sources run (with their
// timeouts), so doctor tells a broken `pass` entry before a launch does.
func Check(ctx context.Context, bindings []Binding, opts Options) []Health {
	set := Resolve(ctx, bindings, opts)
	out := make([]Health, 0, len(set.secrets))
	for _, s := range set.secrets {
		h := Health{Name: s.Name, Variable: s.variable(), Source: s.Source.String(), Hosts: s.HostTexts(),
			Bodies: s.Bodies, BuiltIn: s.BuiltIn, Status: s.Status}
		if s.Err != nil {
			h.Problem = s.Err.Error()
		}
		out = append(out, h)
	}
	return out
}

// String is doctor's line for the secret.
func (h Health) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s (%s)", h.Variable, h.Status, h.Source)
	if h.Name != h.Variable {
		fmt.Fprintf(&b, " [secrets.%s]", h.Name)
	}
	if h.BuiltIn {
		b.WriteString(" built-in")
	}
	fmt.Fprintf(&b, " → %s", strings.Join(h.Hosts, ", "))
	if h.Bodies {
		b.WriteString(", headers and bodies")
	}
	if h.Problem != "" {
		b.WriteString(": " + h.Problem)
	}
	return b.String()
}
