package launch_test

import (
	"context"
	"os"
	"path/filepath"
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

// The user's approval of their API key (by its last 20 characters in
// ~/.claude.json) carries over to the placeholder in the sandbox's copy,
// and only where the host's file approves the real key.
func TestApproveKeyPlaceholder(t *testing.T) {
	const key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ"
	bindings, _ := secrets.Effective(false)
	set := secrets.Resolve(context.Background(), bindings, secrets.Options{LookupEnv: func(string) (string, bool) { return key, true }})
	p := &Plan{Secrets: set}
	home := t.TempDir()
	path := filepath.Join(home, ".claude.json")
	placeholderEnd := set.Env()["ANTHROPIC_API_KEY"][len(set.Env()["ANTHROPIC_API_KEY"])-20:]
	for _, approved := range []string{key[len(key)-20:], "someotherkeysuffix00"} {
		os.WriteFile(path, []byte(`{"userID":"u","customApiKeyResponses":{"approved":["`+approved+`"],"rejected":[]}}`), 0o600)
		mounts := ApproveKeyPlaceholder(p, home, []Mount{{Kind: File, Source: path, Dest: path, Mode: 0o600, Secret: true}})
		got := string(mounts[0].Data)
		if approved == key[len(key)-20:] {
			if !strings.Contains(got, placeholderEnd) || !strings.Contains(got, `"userID": "u"`) {
				t.Errorf("an approved key: the copy does not approve the placeholder: %s", got)
			}
		} else if mounts[0].Source != path || got != "" {
			t.Errorf("an unapproved key was approved inside: %+v", mounts[0])
		}
	}
}
