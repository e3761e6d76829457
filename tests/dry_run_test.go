package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// TestDryRunWritesNothing: --dry-run decides the whole start and prints
// it, and writes nothing: in a fresh git repository (no .git/hooks), for a
// user with no ~/.claude and no state directory for the project, all three
// are still absent afterwards, whatever the backend. A real launch creates
// them (the bubblewrap case checks that too).
func TestDryRunWritesNothing(t *testing.T) {
	requireSandboxHost(t)
	testenv.RequireProgram(t, "git")
	cases := []struct {
		backend string
		require func(testing.TB)
		flags   []string
	}{
		{"bubblewrap", func(testing.TB) {}, nil},
		{"container", requireContainerHost, nil},
		{"vm", requireVMHost, []string{"--accel", "tcg"}},
	}
	for _, c := range cases {
		t.Run(c.backend, func(t *testing.T) {
			c.require(t)
			home := t.TempDir()
			p := project(t)
			if out, err := exec.Command("git", "init", "-q", p).CombinedOutput(); err != nil {
				t.Fatalf("git init: %v\n%s", err, out)
			}
			hooks := filepath.Join(p, ".git", "hooks")
			if err := os.RemoveAll(hooks); err != nil {
				t.Fatal(err)
			}
			o := runOpts{env: []string{"HOME=" + home}}
			buildJSON(t, o, "--backend", c.backend)
			absent := map[string]string{
				"~/.claude":                  filepath.Join(home, ".claude"),
				"the state directory":        stateDir(sharedDirs(), p),
				"the repository's git hooks": hooks,
			}
			args := append([]string{"exec", "--backend", c.backend, "--dry-run"}, c.flags...)
			r := run(t, o, append(args, p, "--", "true")...)
			var inv struct{ Path string }
			if r.code != 0 || json.Unmarshal([]byte(r.stdout), &inv) != nil || inv.Path == "" {
				t.Fatalf("--dry-run: %s", r)
			}
			for what, path := range absent {
				if _, err := os.Lstat(path); err == nil {
					t.Errorf("--dry-run created %s (%s)", what, path)
				}
			}
			if c.backend != "bubblewrap" {
				return
			}
			if r := run(t, o, "exec", p, "--", "true"); r.code != 0 {
				t.Fatalf("launch: %s", r)
			}
			for what, path := range absent {
				if st, err := os.Stat(path); err != nil || !st.IsDir() {
					t.Errorf("a launch did not create %s (%s)", what, path)
				}
			}
		})
	}
}
