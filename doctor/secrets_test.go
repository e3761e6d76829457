package doctor

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/secrets"
)

func TestSecretChecksNeverShowValues(t *testing.T) {
	cfg, err := secrets.Parse("/u/config.toml", []byte(`[secrets.OPENAI]
variable = "OPENAI_API_KEY"
env = "MY_OPENAI"
hosts = ["api.openai.com"]

[secrets.BROKEN]
file = "/nonexistent/secret"
hosts = ["example.com"]
`))
	if err != nil {
		t.Fatal(err)
	}
	bindings, err := secrets.Effective(false, cfg)
	if err != nil {
		t.Fatal(err)
	}
	const value = "sk-proj-VALUEabcdefghijklmnopqrstuvwxyz"
	env := &Env{Secrets: bindings, Getenv: func(k string) string {
		if k == "MY_OPENAI" {
			return value
		}
		return ""
	}}
	checks := secretChecks(context.Background(), env)
	byID := map[string]Check{}
	for _, c := range checks {
		byID[c.ID] = c
	}
	if c := byID["secret:ANTHROPIC_API_KEY"]; c.Status != None {
		t.Errorf("an unset built-in: %+v", c)
	}
	if c := byID["secret:OPENAI"]; c.Status != OK || !strings.Contains(c.Detail, "api.openai.com") || !strings.Contains(c.Detail, "env MY_OPENAI") {
		t.Errorf("a resolved secret: %+v", c)
	}
	if c := byID["secret:BROKEN"]; c.Status != Warn || !strings.Contains(c.Detail, "does not exist") || c.Fix == "" {
		t.Errorf("a failing source: %+v", c)
	}
	out, _ := json.Marshal(checks)
	if strings.Contains(string(out), "VALUEabc") {
		t.Errorf("doctor shows a value: %s", out)
	}
}
