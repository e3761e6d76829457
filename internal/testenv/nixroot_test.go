package testenv_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
)

// TestStartNixRootFreshStore: what a test that needs a second, empty store
// with a daemon of its own gets (issue 18 warms such a store from a file://
// binary cache): an empty store, the configuration asked for, a daemon the
// native client reaches from this process, and builds through it landing
// in that store, not the host's.
func TestStartNixRootFreshStore(t *testing.T) {
	cache := t.TempDir()
	r := testenv.StartNixRoot(t, testenv.NixRootOptions{
		Conf: []string{"substituters = file://" + cache, "require-sigs = false"},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(env []string, name string, args ...string) string {
		t.Helper()
		cmd := r.Command(ctx, name, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}

	if v := run(nil, "nix-store", "--version"); !strings.HasSuffix(v, " "+r.Version) {
		t.Errorf("nix-store --version in store %s: %q, want Nix %s", r.Store, v, r.Version)
	}
	if all := run(nil, "nix", "--extra-experimental-features", "nix-command", "path-info", "--all"); all != "" {
		t.Errorf("a new store is not empty:\n%s", all)
	}
	if subs := run(nil, "nix", "--extra-experimental-features", "nix-command", "config", "show", "substituters"); subs != "file://"+cache {
		t.Errorf("substituters = %q, want file://%s", subs, cache)
	}

	c, err := nixdaemon.Dial(ctx, r.Socket)
	if err != nil {
		t.Fatalf("dialling store %s's daemon at %s: %v", r.Store, r.Socket, err)
	}
	defer c.Close()
	if c.DaemonNixVersion() != r.Version {
		t.Errorf("the daemon at %s says Nix %q, want %s", r.Socket, c.DaemonNixVersion(), r.Version)
	}

	drv := run(nil, "nix-instantiate", "-E", `derivation { name = "nixroot-probe"; system = builtins.currentSystem;
		builder = "/bin/sh"; args = [ "-c" "echo built > $out" ]; }`)
	out := run([]string{"NIX_REMOTE=daemon"}, "nix-store", "--realise", drv)
	if data, err := os.ReadFile(filepath.Join(r.Dir, strings.TrimPrefix(out, "/nix/"))); err != nil || string(data) != "built\n" {
		t.Errorf("the daemon's build %s is not in store %s's directory: %q, %v", out, r.Store, data, err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("%s is in this process's /nix/store too: the stores are not separate", out)
	}
}
