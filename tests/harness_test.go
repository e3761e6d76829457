// Package tests holds the end-to-end tests: they build the real binary,
// realise real closures from tests/fixtures/nixpkgs through the real Nix
// daemon, and run real bubblewrap sandboxes.
package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

var (
	binary  string // the claude-sandbox built for this run
	fixture string // tests/fixtures/nixpkgs, absolute
	workDir string // per-run scratch: shared cache and state
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	var err error
	workDir, err = os.MkdirTemp("", "claude-sandbox-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(workDir)
	os.Chmod(workDir, 0o755)
	binary = filepath.Join(workDir, "claude-sandbox")
	// The launcher and, beside it where the launcher looks, the supervisor.
	build := exec.Command("go", "build", "-o", workDir+"/", "../cmd/claude-sandbox", "../cmd/claude-sandbox-supervisor")
	// Static, as released: a cgo binary pays ~1 ms for the dynamic loader on
	// every launch, a fifth of bwrap's own start-up.
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building claude-sandbox:", err)
		return 1
	}
	// The offline nixpkgs, copied where every user a test runs as can read
	// it: the checkout need not be readable by them (a clone in /root, mode
	// 0700, is not).
	fixture = filepath.Join(workDir, "nixpkgs")
	if err := os.CopyFS(fixture, os.DirFS("fixtures/nixpkgs")); err != nil {
		fmt.Fprintln(os.Stderr, "copying the offline nixpkgs:", err)
		return 1
	}
	return m.Run()
}

// cacheDirs is one cache+state pair. Tests share one (sharedDirs) so the
// fixture closure is built once per run; tests about building use fresh ones.
type cacheDirs struct{ cache, state string }

var shared *cacheDirs

func sharedDirs() cacheDirs {
	if shared == nil {
		shared = &cacheDirs{filepath.Join(workDir, "cache"), filepath.Join(workDir, "state")}
	}
	return *shared
}

func freshDirs(t *testing.T) cacheDirs {
	d := t.TempDir()
	return cacheDirs{filepath.Join(d, "cache"), filepath.Join(d, "state")}
}

// requireSandboxHost needs Nix (and its daemon, for a non-root user) and
// bubblewrap: everything a first build and a launch use.
func requireSandboxHost(t testing.TB) {
	t.Helper()
	testenv.RequireProgram(t, "nix-instantiate")
	testenv.RequireProgram(t, "nix-store")
	testenv.RequireProgram(t, "bwrap")
	if os.Geteuid() != 0 {
		_, err := os.Stat("/nix/var/nix/daemon-socket/socket")
		testenv.Require(t, err == nil, "no Nix daemon socket at /nix/var/nix/daemon-socket/socket (start nix-daemon)")
	}
}

type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

type runOpts struct {
	dirs  cacheDirs
	env   []string // added to (or replacing) the base environment
	stdin string
	path  string // PATH; default the test's PATH
	// command makes the process (default exec.CommandContext), e.g. a
	// testenv.NixRoot's Command, to run with another store at /nix.
	command func(ctx context.Context, name string, args ...string) *exec.Cmd
	timeout time.Duration // default 10 minutes
	// wrap runs claude-sandbox under this command (its argv prefix): a
	// private mount namespace in which a host file is replaced, say.
	wrap []string
	// bin is the claude-sandbox to run; default the one built for this run.
	bin string
}

// run starts claude-sandbox with a small, explicit environment: the host
// environment of a test run is not what a user has.
func run(t testing.TB, o runOpts, args ...string) result {
	t.Helper()
	if o.dirs == (cacheDirs{}) {
		o.dirs = sharedDirs()
	}
	path := o.path
	if path == "" {
		path = os.Getenv("PATH")
	}
	home := os.Getenv("HOME")
	env := []string{
		"PATH=" + path, "HOME=" + home, "USER=" + os.Getenv("USER"),
		"XDG_CACHE_HOME=" + o.dirs.cache, "XDG_STATE_HOME=" + o.dirs.state,
		"CLAUDE_SANDBOX_NIXPKGS=" + fixture, "TERM=dumb",
		// The runner's own ~/.config/claude-sandbox must not steer the tests.
		"XDG_CONFIG_HOME=" + filepath.Join(workDir, "no-config"),
	}
	env = append(env, o.env...)
	if o.timeout == 0 {
		o.timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	command := o.command
	if command == nil {
		command = exec.CommandContext
	}
	bin := binary
	if o.bin != "" {
		bin = o.bin
	}
	argv := append(append(append([]string{}, o.wrap...), bin), args...)
	cmd := command(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Stdin = strings.NewReader(o.stdin)
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running claude-sandbox: %v", err)
		}
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	}
	return result{code, stdout.String(), stderr.String()}
}

type built struct {
	Key     string `json:"key"`
	OutPath string `json:"outPath"`
	DrvPath string `json:"drvPath"`
	Cached  bool   `json:"cached"`
}

func buildJSON(t testing.TB, o runOpts, args ...string) built {
	t.Helper()
	r := run(t, o, append([]string{"build", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("build failed: %s", r)
	}
	var b built
	if err := json.Unmarshal([]byte(r.stdout), &b); err != nil {
		t.Fatalf("build --json printed %q: %v", r.stdout, err)
	}
	return b
}

// project makes a project directory readable by the sandbox user.
func project(t testing.TB) string {
	t.Helper()
	// Not t.TempDir: its parent is private to its owner, and tests that drop
	// privileges need to reach the project too.
	d, err := os.MkdirTemp(workDir, "project-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	os.Chmod(d, 0o755)
	p := filepath.Join(d, "project")
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkNetworkSwitch probes a listener on the host's loopback from inside,
// through runIn. No sandbox shares the host's network namespace: a direct
// connection never reaches the listener; through the sandbox's proxy it
// does only when a rule names its address; with --no-network there is no
// proxy either. what names the sandbox in failures.
func checkNetworkSwitch(t *testing.T, what string, runIn func(script string, flags ...string) result) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "REACHED") })}
	var hits atomic.Int32
	srv.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			hits.Add(1)
		}
	}
	go srv.Serve(ln)
	defer srv.Close()
	addr := ln.Addr().String()
	direct := fmt.Sprintf(`exec 3<>/dev/tcp/127.0.0.1/%d && echo CONNECTED`, ln.Addr().(*net.TCPAddr).Port)
	proxied := `curl -s -m 10 http://` + addr + `/; echo " exit=$?"`

	for _, flags := range [][]string{{"--no-network"}, nil, {"--network", "open"}, {"--allow", addr}} {
		if r := runIn(direct, flags...); strings.Contains(r.stdout, "CONNECTED") {
			t.Errorf("%s %v: a direct connection reached the host's loopback: %s", what, flags, r)
		}
	}
	for _, flags := range [][]string{{"--no-network"}, nil, {"--network", "open"}} {
		if r := runIn(proxied, flags...); strings.Contains(r.stdout, "REACHED") {
			t.Errorf("%s %v: the host's loopback service, which no rule names, was reached: %s", what, flags, r)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the host listener saw %d connections from the %s", n, what)
	}
	if r := runIn(proxied, "--allow", addr); !strings.Contains(r.stdout, "REACHED") {
		t.Fatalf("%s with --allow %s: the listener was not reachable through the proxy: %s", what, addr, r)
	}
}
