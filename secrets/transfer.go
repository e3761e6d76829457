package secrets

import "fmt"

// Sealed is one resolved secret as it travels from the launcher to the
// sandbox's supervisor: over the supervisor's spec pipe, never argv, the
// environment or a file. It carries the real value; it exists for that
// one hop and nothing else.
type Sealed struct {
	Name        string   `json:"name"`
	Variable    string   `json:"variable"`
	Hosts       []string `json:"hosts"`
	Bodies      bool     `json:"bodies,omitempty"`
	Value       string   `json:"value"`
	Placeholder string   `json:"placeholder"`
}

// String never shows the value.
func (s Sealed) String() string { return "sealed secret " + s.Name }

// GoString is String.
func (s Sealed) GoString() string { return s.String() }

// Seal lists the resolved secrets for the supervisor.
func (s *Set) Seal() []Sealed {
	if s == nil {
		return nil
	}
	var out []Sealed
	for _, sec := range s.secrets {
		if sec.Status != Resolved {
			continue
		}
		out = append(out, Sealed{Name: sec.Name, Variable: sec.variable(), Hosts: sec.HostTexts(),
			Bodies: sec.Bodies, Value: string(sec.value), Placeholder: sec.placeholder})
	}
	return out
}

// Unseal is the supervisor's side of Seal: the set the launcher resolved,
// with the placeholders the sandbox holds.
func Unseal(items []Sealed) (*Set, error) {
	set := &Set{}
	for _, it := range items {
		b := Binding{Name: it.Name, Variable: it.Variable, Bodies: it.Bodies}
		for _, h := range it.Hosts {
			p, err := ParseHost(h)
			if err != nil {
				return nil, fmt.Errorf("secret %s: %v", it.Name, err)
			}
			b.Hosts = append(b.Hosts, p)
		}
		if it.Value == "" || it.Placeholder == "" || it.Value == it.Placeholder {
			return nil, fmt.Errorf("secret %s: no value or placeholder", it.Name)
		}
		set.secrets = append(set.secrets, &Secret{Binding: b, Status: Resolved, value: hidden(it.Value), placeholder: it.Placeholder})
	}
	return set, nil
}

// Variables are the variables every binding fills, resolved or not: the
// sandbox never gets their host values directly.
func Variables(bindings []Binding) []string {
	out := make([]string, 0, len(bindings))
	for _, b := range bindings {
		out = append(out, b.variable())
	}
	return out
}

// Suffixes are the last n characters of a resolved secret's value and of
// its placeholder, for the variable: Claude Code remembers an API key the
// user approved by its last 20 characters, and the sandbox's copy of that
// record must approve the placeholder the same way. ok is false unless the
// secret is resolved and both are longer than n.
func (s *Set) Suffixes(variable string, n int) (value, placeholder string, ok bool) {
	if s == nil {
		return "", "", false
	}
	for _, sec := range s.secrets {
		if sec.Status == Resolved && sec.variable() == variable && len(sec.value) > n && len(sec.placeholder) > n {
			return string(sec.value[len(sec.value)-n:]), sec.placeholder[len(sec.placeholder)-n:], true
		}
	}
	return "", "", false
}
