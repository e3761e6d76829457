package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// NixRoot is a store of the second Nix (tests/nix-root.sh): Debian 13's
// nix-bin beside the host's, with a store, configuration and daemon of
// its own. Its daemon can be reached from here through Socket; commands
// that need its store at /nix (nix-store, nix-build, claude-sandbox) run
// through Command, in a mount namespace where /nix is Dir and every nix-*
// program is the second Nix.
type NixRoot struct {
	Store   string // the store's name (tests/nix-root.sh STORE)
	Dir     string // the store's /nix, as this process sees it
	Socket  string // its daemon's socket, as this process sees it
	Version string // the second Nix's version, e.g. "2.26.3"
	script  string
}

// NixRootOptions chooses the store.
type NixRootOptions struct {
	// Store names a shared store (such as "main", which tests/run.sh's
	// second pass uses); its daemon is started if it is not running and
	// left running. Empty: a new, empty store for this test alone, removed
	// when the test ends.
	Store string
	// Conf lines are added to a new store's nix.conf (for example
	// "substituters = file:///tmp/cache", "require-sigs = false").
	Conf []string
	// ThisNix makes the new store one of the Nix this process runs (the
	// host's; the second Nix in the suite's second pass) instead of the
	// second Nix's: a test then runs against each Nix in its own pass.
	ThisNix bool
}

// StartNixRoot returns a running store of the second Nix. It needs root
// (the store is mounted in a namespace of its own) and the second Nix
// installed (sudo tests/nix-root.sh ensure; tests/run.sh does it): where
// either is missing it skips, or fails under CI.
func StartNixRoot(t testing.TB, o NixRootOptions) *NixRoot {
	t.Helper()
	RequireRoot(t)
	script, err := repoFile("tests/nix-root.sh")
	Require(t, err == nil, fmt.Sprintf("tests/nix-root.sh not found: %v", err))
	// Not installed: under CI, start installs it (or waits for tests/run.sh,
	// which installs it while the first pass runs); elsewhere that is a
	// download of minutes the developer asks for.
	if _, err := runScript(script, "version"); err != nil && !InCI() && !o.ThisNix {
		t.Skipf("skipped: the second Nix is not installed (sudo tests/nix-root.sh ensure): %v", err)
	}
	fresh := o.Store == ""
	if !fresh && (len(o.Conf) > 0 || o.ThisNix) {
		t.Fatalf("StartNixRoot: Conf and ThisNix are for a new store; store %q keeps its own", o.Store)
	}
	if fresh {
		// Short: the daemon's socket path must fit in 108 bytes.
		o.Store = fmt.Sprintf("t%d-%d", os.Getpid(), freshStores.Add(1))
	}
	args := []string{"start", o.Store}
	if fresh {
		args = append(args, "--fresh")
		if o.ThisNix {
			args = append(args, "--this-nix")
		}
		for _, l := range o.Conf {
			args = append(args, "--conf", l)
		}
	}
	socket, err := runScript(script, args...)
	if err != nil {
		t.Fatalf("tests/nix-root.sh %s: %v", strings.Join(args, " "), err)
	}
	if fresh {
		t.Cleanup(func() {
			if _, err := runScript(script, "destroy", o.Store); err != nil {
				t.Errorf("removing store %s: %v", o.Store, err)
			}
		})
	}
	r := &NixRoot{
		Store:  o.Store,
		Dir:    strings.TrimSuffix(socket, "/var/nix/daemon-socket/socket"),
		Socket: socket,
		script: script,
	}
	if o.ThisNix {
		out, err := r.Command(context.Background(), "nix-store", "--version").Output()
		fields := strings.Fields(string(out))
		if err != nil || len(fields) == 0 {
			t.Fatalf("nix-store --version in store %s: %v", o.Store, err)
		}
		r.Version = fields[len(fields)-1]
		return r
	}
	if r.Version, err = runScript(script, "version"); err != nil {
		t.Fatalf("tests/nix-root.sh version: %v", err)
	}
	return r
}

var freshStores atomic.Int64

// Command runs name with this store at /nix and the second Nix as every
// nix-* program. Run as root, it uses the store directly, as root's Nix
// does; set NIX_REMOTE=daemon in cmd.Env to go through the daemon.
func (r *NixRoot) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, r.script, append([]string{"run", r.Store, "--", name}, args...)...)
}

func runScript(script string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, script, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// repoFile finds rel in the repository holding the working directory
// (tests run in their package's directory).
func repoFile(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, rel)
			_, err := os.Stat(p)
			return p, err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
