package broker

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// Chromium trusts the CA through the managed policy file WriteTrust
// writes (CACertificates), and still holds it to its name constraints.
// Chromium reads policies from a fixed directory, /etc/chromium/policies;
// the test gives it its own with bubblewrap rather than touch the host's.
func TestChromiumTrustsThePolicyCA(t *testing.T) {
	chromium := ""
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			chromium = p
			break
		}
	}
	if chromium == "" {
		// Chromium is not among the suite's host packages: this test
		// runs where a developer has it (apt-get install chromium).
		t.Skip("skipped: chromium is not installed")
	}
	bwrap := testenv.RequireProgram(t, "bwrap")
	ca, addr, _ := constrainedServer(t)
	_, port, _ := net.SplitHostPort(addr)
	etc := t.TempDir()
	trust, err := ca.WriteTrust(filepath.Join(t.TempDir(), "trust"), nil)
	if err != nil {
		t.Fatal(err)
	}
	policy, _ := os.ReadFile(trust.ChromiumPolicy)
	managed := filepath.Join(etc, "policies", "managed")
	os.MkdirAll(managed, 0o755)

	load := func(host string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		args := []string{"--dev-bind", "/", "/", "--bind", etc, "/etc/chromium", chromium,
			"--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=" + t.TempDir(),
			"--host-resolver-rules=MAP ok.test 127.0.0.1, MAP evil.test 127.0.0.1",
			"--dump-dom", "https://" + host + ":" + port + "/"}
		out, _ := exec.CommandContext(ctx, bwrap, args...).Output()
		return string(out)
	}
	if out := load("ok.test"); strings.Contains(out, "hello from") {
		t.Fatalf("Chromium trusted the CA without the policy:\n%s", out)
	}
	if err := os.WriteFile(filepath.Join(managed, ChromiumPolicyFile), policy, 0o644); err != nil {
		t.Fatal(err)
	}
	if out := load("ok.test"); !strings.Contains(out, "hello from ok.test") {
		t.Fatalf("Chromium with the policy did not load the bound host:\n%s", out)
	}
	if out := load("evil.test"); strings.Contains(out, "hello from") {
		t.Fatalf("Chromium accepted a name outside the CA's constraints:\n%s", out)
	}
}
