package tests

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// The Nix daemon gateway, probed from inside real sandboxes: every Nix
// command below runs inside, as a user's agent would run it, against the
// host's real daemon (Debian's: sandbox = false) through the sandbox's
// supervisor.

// inSandbox runs a script in project p's sandbox of one backend, with
// launch flags.
type inSandbox func(t *testing.T, o runOpts, p, script string, flags ...string) result

func bubblewrapRunner(t *testing.T) (inSandbox, string) {
	requireSandboxHost(t)
	buildJSON(t, runOpts{})
	return sh, project(t)
}

func containerRunner(t *testing.T) (inSandbox, string) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	return func(t *testing.T, o runOpts, p, script string, flags ...string) result {
		return inContainer(t, u, o, p, script, flags...)
	}, p
}

// unique is a name no earlier run used, so that a derivation of it is
// never already valid in the store.
func unique(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), time.Now().UnixNano())
}

func TestGatewayFromInsideBubblewrap(t *testing.T) {
	run, p := bubblewrapRunner(t)
	gatewayProbes(t, run, p)
}

func TestGatewayFromInsideContainer(t *testing.T) {
	run, p := containerRunner(t)
	gatewayProbes(t, run, p)
}

func gatewayProbes(t *testing.T, run inSandbox, p string) {
	testenv.RequireProgram(t, "nix-store")
	if sandboxed := hostDaemonSandboxes(t); sandboxed {
		t.Skip("the host daemon sandboxes its builds; these probes are about one that does not (Debian's default)")
	}
	write := func(name, content string) string {
		path := filepath.Join(p, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, 0o644)
		return path
	}

	// Queries work.
	r := run(t, runOpts{}, p, `nix-store -q --hash "$(readlink -f "$(command -v bash)")"`)
	if r.code != 0 || !strings.HasPrefix(strings.TrimSpace(r.stdout), "sha256:") {
		t.Fatalf("a path-info query through the gateway: %s", r)
	}

	// A builder that would write outside the sandbox: refused by default,
	// the refusal printed by the client, nothing written on the host.
	marker := filepath.Join(os.TempDir(), unique("gateway-escape"))
	t.Cleanup(func() { os.Remove(marker) })
	escape := write("escape.nix", fmt.Sprintf(`derivation { name = %q; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo escaped > %s; echo x > $out" ]; }`, unique("escape"), marker))
	r = run(t, runOpts{}, p, `nix-build --no-out-link `+escape)
	if r.code == 0 || !strings.Contains(r.stderr, "claude-sandbox refused building") || !strings.Contains(r.stderr, "sandbox = false") || !strings.Contains(r.stderr, "--nix-unsandboxed-builds") {
		t.Fatalf("an unsandboxed build was not refused with the setting and the opt-in named: %s", r)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the refused builder ran on the host")
	}
	// With the opt-in it runs, on the host, as the opt-in says.
	r = run(t, runOpts{}, p, `nix-build --no-out-link `+escape, "--nix-unsandboxed-builds")
	if r.code != 0 {
		t.Fatalf("with --nix-unsandboxed-builds the build was refused: %s", r)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the opted-in build did not run: %v", err)
	}

	// A fixed-output derivation downloads with the host's network: refused
	// when the sandbox has none.
	content := unique("fod")
	sum := sha256.Sum256([]byte(content))
	fod := write("fod.nix", fmt.Sprintf(`derivation { name = %q; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "printf %%s %s > $out" ]; outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = %q; urls = [ "https://example.org/x" ]; }`, content, content, hex.EncodeToString(sum[:])))
	r = run(t, runOpts{}, p, `nix-build --no-out-link `+fod, "--no-network", "--nix-unsandboxed-builds")
	if r.code == 0 || !strings.Contains(r.stderr, "claude-sandbox refused") || !strings.Contains(r.stderr, "fixed-output") {
		t.Errorf("a fixed-output build under --no-network was not refused: %s", r)
	}

	// A privileged setting is refused, whoever the host user is.
	r = run(t, runOpts{}, p, `nix-store -q --hash "$(readlink -f "$(command -v bash)")" --option substituters file:///tmp/evil-cache`)
	if r.code == 0 || !strings.Contains(r.stderr, "substituters") || !strings.Contains(r.stderr, "claude-sandbox refused") {
		t.Errorf("a privileged setting override was not refused: %s", r)
	}

	// Every decision is one line of the project's session log.
	entries := sessionLog(t, runOpts{}, p)
	var refusedBuilds, allowedBuilds, refusedSettings int
	for _, e := range entries {
		if e.Service != "nix" {
			continue
		}
		switch {
		case e.Op == "BuildPaths" && e.Decision == "refuse" && strings.Contains(e.Target, "escape"):
			refusedBuilds++
		case strings.HasPrefix(e.Op, "BuildPaths") && e.Decision == "allow" && strings.Contains(e.Target, "escape"):
			allowedBuilds++
		case e.Op == "SetOptions" && e.Decision == "refuse":
			refusedSettings++
		}
	}
	if refusedBuilds != 1 || allowedBuilds != 1 || refusedSettings != 1 {
		t.Errorf("session log: %d refused and %d allowed builds of the escape derivation, %d refused settings; want 1, 1, 1:\n%+v", refusedBuilds, allowedBuilds, refusedSettings, entries)
	}
}

type logEntry struct {
	Sandbox  string `json:"sandbox"`
	Service  string `json:"service"`
	Decision string `json:"decision"`
	Op       string `json:"op"`
	Target   string `json:"target"`
	Rule     string `json:"rule"`
}

func sessionLog(t *testing.T, o runOpts, p string) []logEntry {
	t.Helper()
	r := run(t, o, "log", "--json", p)
	if r.code != 0 {
		t.Fatalf("log: %s", r)
	}
	var out []logEntry
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if line == "" {
			continue
		}
		var e logEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("log --json line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

// hostDaemonSandboxes asks the host's Nix how its daemon builds.
func hostDaemonSandboxes(t *testing.T) bool {
	out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "show-config", "--json").Output()
	if err != nil {
		out, err = exec.Command("nix", "--extra-experimental-features", "nix-command", "config", "show", "--json").Output()
	}
	if err != nil {
		t.Fatalf("asking the host's Nix for its configuration: %v", err)
	}
	var conf map[string]struct{ Value any }
	if err := json.Unmarshal(out, &conf); err != nil {
		t.Fatal(err)
	}
	v := fmt.Sprint(conf["sandbox"].Value)
	return v == "true"
}

// Where the host daemon sandboxes its builds, a substitution-free build of
// an input-addressed derivation works from inside, with no opt-in, and its
// builder stays in the daemon's sandbox. The daemon is a second nix-daemon
// on this store with sandbox = true (a daemon forks per connection anyway),
// reached with NIX_DAEMON_SOCKET_PATH as any Nix client would.
func TestGatewayBuildsWhereTheDaemonSandboxes(t *testing.T) {
	run, p := bubblewrapRunner(t)
	testenv.RequireRoot(t)
	socket, confDir := startSandboxedDaemon(t)
	env := []string{"NIX_DAEMON_SOCKET_PATH=" + socket, "NIX_CONF_DIR=" + confDir}

	// The builder must be in the store for a sandboxed build to see it.
	bbDir := filepath.Join(t.TempDir(), "busybox-static")
	os.Mkdir(bbDir, 0o755)
	data, err := os.ReadFile("/bin/busybox")
	testenv.Require(t, err == nil, "static busybox at /bin/busybox (Debian package busybox-static)")
	os.WriteFile(filepath.Join(bbDir, "busybox"), data, 0o755)
	out, err := exec.Command("nix-store", "--add", bbDir).Output()
	if err != nil {
		t.Fatalf("adding busybox to the store: %v", err)
	}
	bb := strings.TrimSpace(string(out))

	marker := filepath.Join(os.TempDir(), unique("sandboxed-escape"))
	t.Cleanup(func() { os.Remove(marker) })
	expr := filepath.Join(p, "sandboxed.nix")
	os.WriteFile(expr, []byte(fmt.Sprintf(`derivation { name = %q; system = builtins.currentSystem; builder = "${builtins.storePath %q}/busybox"; args = [ "sh" "-c" "touch %s 2>/dev/null; if [ -e /etc/passwd ] && [ -e /usr ]; then echo host > $out; else echo sandboxed > $out; fi" ]; }`,
		unique("sandboxed"), bb, marker)), 0o644)
	r := run(t, runOpts{env: env}, p, `cat "$(nix-build --no-out-link `+expr+`)"`)
	if r.code != 0 || strings.TrimSpace(r.stdout) != "sandboxed" {
		t.Fatalf("a build through the gateway on a sandboxing daemon: %s", r)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the sandboxed builder wrote on the host")
	}
}

// startSandboxedDaemon starts a second root nix-daemon on this store, with
// a configuration of its own saying sandbox = true (and never falling back
// to building unsandboxed).
func startSandboxedDaemon(t *testing.T) (socket, confDir string) {
	t.Helper()
	daemon := testenv.RequireProgram(t, "nix-daemon")
	_, err := os.Stat("/bin/busybox")
	testenv.Require(t, err == nil, "static busybox at /bin/busybox (Debian package busybox-static)")
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	confDir, socket = filepath.Join(dir, "conf"), filepath.Join(dir, "socket")
	os.Mkdir(confDir, 0o755)
	conf := "sandbox = true\nsandbox-fallback = false\nsandbox-paths = /bin/sh=/bin/busybox\nbuild-users-group = nixbld\nexperimental-features = nix-command\nsubstituters =\n"
	if err := os.WriteFile(filepath.Join(confDir, "nix.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(daemon)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIX_REMOTE=") && !strings.HasPrefix(kv, "NIX_CONF_DIR=") && !strings.HasPrefix(kv, "NIX_DAEMON_SOCKET_PATH=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "NIX_CONF_DIR="+confDir, "NIX_DAEMON_SOCKET_PATH="+socket)
	var log syncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("second nix-daemon's log:\n%s", log.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return socket, confDir
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second nix-daemon did not listen on %s", socket)
		}
	}
}

// No sandbox of any backend binds the host's raw daemon socket: what sits
// at the daemon's path inside is the gateway's.
func TestDryRunBindsNoRawDaemonSocket(t *testing.T) {
	requireSandboxHost(t)
	raw := "/nix/var/nix/daemon-socket/socket"
	for _, backend := range []string{"bubblewrap", "container", "vm"} {
		buildJSON(t, runOpts{}, "--backend", backend)
		p := project(t)
		r := run(t, runOpts{}, "--backend", backend, "--dry-run", p)
		if r.code != 0 {
			t.Fatalf("%s --dry-run: %s", backend, r)
		}
		var inv struct{ Args []string }
		if err := json.Unmarshal([]byte(r.stdout), &inv); err != nil {
			t.Fatalf("%s --dry-run printed %q: %v", backend, r.stdout, err)
		}
		for i, a := range inv.Args {
			switch {
			// bwrap: --bind SRC DEST and its kin.
			case strings.HasPrefix(a, "--") && strings.Contains(a, "bind") && i+1 < len(inv.Args) && inv.Args[i+1] == raw:
				t.Errorf("%s binds the host's daemon socket: %q", backend, inv.Args[i:i+3])
			// nspawn: --bind=SRC:DEST; QEMU: path=SRC.
			case strings.Contains(a, "="+raw+":") || strings.Contains(a, "path="+filepath.Dir(raw)):
				t.Errorf("%s binds the host's daemon socket: %q", backend, a)
			}
		}
	}
}

// A sandbox lives as long as its last session: a command that joined it is
// not killed when the one that started it ends, and many launches at once
// all run to their end.
func TestLifetimeBubblewrap(t *testing.T) {
	run, p := bubblewrapRunner(t)
	lifetimeProbes(t, run, p)
}

func TestLifetimeContainer(t *testing.T) {
	run, p := containerRunner(t)
	lifetimeProbes(t, run, p)
}

func lifetimeProbes(t *testing.T, run inSandbox, p string) {
	// Two terminals: the second joins the first's sandbox 0.3 s after it
	// started, and outlives it.
	first := make(chan result, 1)
	go func() { first <- run(t, runOpts{}, p, `sleep 1`) }()
	time.Sleep(300 * time.Millisecond)
	second := run(t, runOpts{}, p, `sleep 3; echo done > b.out`)
	if r := <-first; r.code != 0 {
		t.Errorf("the first command: %s", r)
	}
	if second.code != 0 {
		t.Errorf("the second command, joined, was killed when the first ended: %s", second)
	}
	if data, err := os.ReadFile(filepath.Join(p, "b.out")); err != nil || string(data) != "done\n" {
		t.Errorf("b.out: %q %v", data, err)
	}

	// Twenty at once, each writing its own line after a short sleep.
	const n = 20
	results := make(chan result, n)
	for i := 0; i < n; i++ {
		go func() {
			results <- run(t, runOpts{}, p, fmt.Sprintf(`sleep 0.5; echo line-%d >> lines.txt`, i))
		}()
	}
	for i := 0; i < n; i++ {
		if r := <-results; r.code != 0 {
			t.Errorf("one of %d concurrent launches: %s", n, r)
		}
	}
	data, _ := os.ReadFile(filepath.Join(p, "lines.txt"))
	for i := 0; i < n; i++ {
		if !strings.Contains(string(data), fmt.Sprintf("line-%d\n", i)) {
			t.Errorf("line-%d missing from lines.txt:\n%s", i, data)
		}
	}
}
