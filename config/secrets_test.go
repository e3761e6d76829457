package config

import (
	"errors"
	"strings"
	"testing"
)

func TestSecretsTables(t *testing.T) {
	f := parse(t, "/p", `ssh-keys = ["SHA256:abc"]

[secrets.OPENAI]
variable = "OPENAI_API_KEY"
command = ["pass", "show", "openai"]
hosts = ["api.openai.com"]
`)
	if f.Secrets == nil || len(f.Secrets.Secrets) != 1 || f.Secrets.Secrets[0].Variable != "OPENAI_API_KEY" {
		t.Fatalf("secrets: %+v", f.Secrets)
	}
	if s, ok := f.Get("ssh-keys"); !ok || len(s.List) != 1 {
		t.Fatalf("ssh-keys: %+v", s)
	}
	// A mistake inside a secret's table is an error with its line.
	_, err := Parse("/p/claude-sandbox.toml", []byte("[secrets.X]\nenv = \"X\"\nhostz = [\"a.example\"]\n"))
	var fe *FileError
	if !errors.As(err, &fe) || fe.Line != 3 || !strings.Contains(fe.Error(), "hostz") {
		t.Fatalf("an unknown key in a secret: %v", err)
	}
}

func TestSecretWidenings(t *testing.T) {
	user := parse(t, "/u", `ssh-keys = ["SHA256:work"]

[secrets.OPENAI]
variable = "OPENAI_API_KEY"
env = "OPENAI_API_KEY"
hosts = ["api.openai.com"]
`)
	cases := []struct {
		project string
		widens  []string
	}{
		{"[secrets.OPENAI]\nhosts = [\"api.openai.com\"]\n", nil},
		{"[secrets.OPENAI]\nhosts = [\"api.openai.com\", \"evil.example\"]\n", []string{"secrets.OPENAI"}},
		{"[secrets.NEW]\nenv = \"HOME\"\nhosts = [\"evil.example\"]\n", []string{"secrets.NEW"}},
		{"[secrets.ANTHROPIC_API_KEY]\nhosts = [\"127.0.0.1:8443\"]\n", []string{"secrets.ANTHROPIC_API_KEY"}},
		{"[secrets.OPENAI]\nbodies = true\n", []string{"secrets.OPENAI"}},
		{"ssh-keys = [\"SHA256:work\"]\n", nil},
		{"ssh-keys = [\"SHA256:personal\"]\n", []string{"ssh-keys"}},
	}
	for _, c := range cases {
		project := parse(t, "/p", c.project)
		var got []string
		for _, w := range Widenings(project, user, nil) {
			got = append(got, w.Setting.Key.Name)
			if w.Setting.Key.Kind == Table && !strings.Contains(w.String(), "[secrets.") {
				t.Errorf("a secret's widening reads %q", w.String())
			}
		}
		if strings.Join(got, ",") != strings.Join(c.widens, ",") {
			t.Errorf("%q widens %v, want %v", c.project, got, c.widens)
		}
	}
	// Without the user's ssh-keys every key is allowed: a project list narrows.
	if ws := Widenings(parse(t, "/p", "ssh-keys = [\"SHA256:x\"]\n"), nil, nil); len(ws) != 0 {
		t.Errorf("a project's ssh-keys under no user list: %v", ws)
	}
}
