package launch_test

import (
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/broker"
	. "github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/secrets"
)

// The trust files the supervisor writes are the ones the sandbox's
// variables name (the launcher does not link the broker to ask).
func TestTrustFileNamesMatchTheBroker(t *testing.T) {
	if TrustFileNames != [2]string{broker.BundleFile, broker.CAFile} || ChromiumCAPolicy != broker.ChromiumPolicyFile {
		t.Fatalf("launch names %v, the broker writes %s and %s", TrustFileNames, broker.BundleFile, broker.CAFile)
	}
}

// A variable a secret fills never crosses from the host, by the allowlist
// or by --env: the sandbox gets the placeholder or nothing.
func TestSecretVariablesAreWithheld(t *testing.T) {
	bindings, err := secrets.Effective(true)
	if err != nil {
		t.Fatal(err)
	}
	host := map[string]string{"ANTHROPIC_API_KEY": "sk-ant-real", "GH_TOKEN": "ghp_real", "GITHUB_TOKEN": "ghp_real2", "TERM": "xterm"}
	rt := &Runtime{Home: "/home/u", User: "u", GHToken: true, ExtraEnv: []string{"GH_TOKEN"}, LookupEnv: env(host), Secrets: bindings}
	WithholdSecrets(rt)
	got, err := SandboxEnv(handManifest(), rt)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range got {
		if strings.Contains(kv, "real") {
			t.Errorf("a secret's host value crossed: %s", kv)
		}
	}
	if EnvValue(got, "TERM") != "xterm" {
		t.Errorf("the allowlist no longer passes: %v", got)
	}
}
