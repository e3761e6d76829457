package supervisor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/broker"
	"github.com/claude-sandbox/claude-sandbox/secrets"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// The broker a spec describes has written, before it serves anyone, what
// the sandbox reads: the trust files, Chromium's CA policy, and the copy
// of Claude Code's login holding placeholders (in place: the sandbox's
// bind holds the file's inode).
func TestBrokerFromSpecWritesWhatTheSandboxReads(t *testing.T) {
	dir := t.TempDir()
	trust, chromium, claude := filepath.Join(dir, "trust"), filepath.Join(dir, "chromium"), filepath.Join(dir, "claude")
	for _, d := range []string{trust, chromium, claude} {
		os.Mkdir(d, 0o755)
	}
	const access, refresh = "sk-ant-oat01-ACCESSabcdefghijklmnopqrstuvwxyz", "sk-ant-ort01-REFRESHabcdefghijklmnopqrstuvwxyz"
	os.WriteFile(filepath.Join(claude, ".credentials.json"), []byte(`{"claudeAiOauth":{"accessToken":"`+access+`","refreshToken":"`+refresh+`","expiresAt":4102444800000},"mcpOAuth":{"x":"MCP-SECRET"}}`), 0o600)
	copyPath := filepath.Join(dir, "claude-credentials.json")
	os.WriteFile(copyPath, nil, 0o600)
	before, _ := os.Stat(copyPath)

	spec := control.BrokerSpec{
		Secrets:     []secrets.Sealed{{Name: "GH_TOKEN", Variable: "GH_TOKEN", Hosts: []string{"github.com"}, Value: "ghp_realvalue0123456789", Placeholder: "ghp_placeholder012345678"}},
		TrustDir:    trust,
		ChromiumDir: chromium,
		Label:       "test",
		Login:       &control.LoginSpec{ConfigDir: claude, SandboxFile: copyPath},
	}
	if _, err := newBroker(spec, nil, sessionlog.Discard); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(trust, broker.BundleFile), filepath.Join(trust, broker.CAFile), filepath.Join(chromium, broker.ChromiumPolicyFile)} {
		if data, err := os.ReadFile(f); err != nil || len(data) == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	data, _ := os.ReadFile(copyPath)
	text := string(data)
	if !strings.Contains(text, "sk-ant-oat01-") || strings.Contains(text, access) || strings.Contains(text, refresh) || strings.Contains(text, "MCP-SECRET") {
		t.Errorf("the sandbox's login copy: %s", text)
	}
	after, _ := os.Stat(copyPath)
	if !os.SameFile(before, after) {
		t.Error("the login copy was replaced, not written in place: the sandbox's bind would not see it")
	}
}
