package nixgate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
	"github.com/nix-community/go-nix/pkg/wire"
)

// Live tests: the real host daemon behind the gateway, driven with the real
// Nix clients, asserting what a user sees. They run against the daemon at
// NIXGATE_TEST_SOCKET (default: the standard socket) with the clients in
// NIXGATE_TEST_BIN (default: PATH), whose configuration directory is
// NIXGATE_TEST_CONF_DIR (default: the clients' own), so the same tests run
// against another Nix (e.g. Debian 13's 2.26 in its own root).

type liveEnv struct {
	socket  string // the host daemon
	bin     string // directory of the Nix clients, "" for PATH
	confDir string // the daemon's NIX_CONF_DIR, "" for the default
}

func live(t testing.TB) liveEnv {
	t.Helper()
	e := liveEnv{
		socket:  os.Getenv("NIXGATE_TEST_SOCKET"),
		bin:     os.Getenv("NIXGATE_TEST_BIN"),
		confDir: os.Getenv("NIXGATE_TEST_CONF_DIR"),
	}
	if e.socket == "" {
		e.socket = nixdaemon.DefaultSocketPath
	}
	_, err := os.Stat(e.socket)
	testenv.Require(t, err == nil, fmt.Sprintf("a Nix daemon socket at %s (%v)", e.socket, err))
	for _, tool := range []string{"nix-store", "nix-build", "nix-instantiate", "nix"} {
		_, err := exec.LookPath(e.tool(tool))
		testenv.Require(t, err == nil, tool+" is not installed")
	}
	return e
}

func (e liveEnv) tool(name string) string {
	if e.bin == "" {
		return name
	}
	return filepath.Join(e.bin, name)
}

func (e liveEnv) probe(t testing.TB) HostFacts {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := ProbeHost(ctx, ProbeOptions{Socket: e.socket, Nix: e.tool("nix"), ConfDir: e.confDir})
	var oe *net.OpError
	if errors.As(err, &oe) && !testenv.InCI() {
		t.Skipf("cannot connect to the Nix daemon: %v", err)
	}
	if err != nil {
		t.Fatalf("ProbeHost: %v", err)
	}
	return h
}

// memLog is a Logger keeping entries for assertions.
type memLog struct {
	mu      sync.Mutex
	entries []sessionlog.Entry
}

func (l *memLog) Log(e sessionlog.Entry) {
	l.mu.Lock()
	l.entries = append(l.entries, e)
	l.mu.Unlock()
}

func (l *memLog) all() []sessionlog.Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]sessionlog.Entry(nil), l.entries...)
}

func (l *memLog) find(op string, d sessionlog.Decision) []sessionlog.Entry {
	var out []sessionlog.Entry
	for _, e := range l.all() {
		if e.Op == op && e.Decision == d {
			out = append(out, e)
		}
	}
	return out
}

// gate is a running gateway and a client environment that uses it, as a
// process inside a sandbox would.
type gate struct {
	env    liveEnv
	socket string
	log    *memLog
	conf   string // the clients' NIX_CONF_DIR: a generated nix.conf, as inside a sandbox
	home   string
}

func startGate(t *testing.T, e liveEnv, cfg Config) *gate {
	t.Helper()
	dir := t.TempDir()
	g := &gate{env: e, socket: filepath.Join(dir, "socket"), log: &memLog{}, conf: filepath.Join(dir, "etc-nix"), home: filepath.Join(dir, "home")}
	if err := os.MkdirAll(g.conf, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(g.home, 0o755); err != nil {
		t.Fatal(err)
	}
	// What the supervisor's generated nix.conf holds: nothing privileged.
	if err := os.WriteFile(filepath.Join(g.conf, "nix.conf"), []byte("experimental-features = nix-command\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Socket = e.socket
	cfg.Logger = g.log
	l, err := net.Listen("unix", g.socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(cfg).Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return g
}

// run runs a Nix client against the gateway and returns its stdout,
// stderr and error.
func (g *gate) run(t *testing.T, name string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.env.tool(name), args...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + g.home,
		"NIX_REMOTE=daemon",
		"NIX_DAEMON_SOCKET_PATH=" + g.socket,
		"NIX_CONF_DIR=" + g.conf,
		"NIX_USER_CONF_FILES=",
		"TMPDIR=" + os.TempDir(),
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

func (g *gate) mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, errOut, err := g.run(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errOut)
	}
	return strings.TrimSpace(out)
}

// instantiate writes a derivation through the gateway (nix-instantiate:
// AddTextToStore, queries) from an expression taking its values as
// --argstr, never spliced into Nix source.
func (g *gate) instantiate(t *testing.T, expr string, args map[string]string) string {
	t.Helper()
	argv := []string{}
	for k, v := range args {
		argv = append(argv, "--argstr", k, v)
	}
	argv = append(argv, "-E", expr)
	return g.mustRun(t, "nix-instantiate", argv...)
}

const shellDrv = `{ name, script }: derivation {
  inherit name;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" script ];
}`

func unique(t *testing.T, what string) string {
	return fmt.Sprintf("nixgate-%s-%d-%d", what, os.Getpid(), time.Now().UnixNano())
}

func TestLiveQueries(t *testing.T) {
	e := live(t)
	h := e.probe(t)
	g := startGate(t, e, Config{Host: h})

	// A valid path to ask about: one the gateway itself adds.
	file := filepath.Join(t.TempDir(), unique(t, "query"))
	if err := os.WriteFile(file, []byte("query me\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := g.mustRun(t, "nix-store", "--add", file)
	if !strings.HasPrefix(p, "/nix/store/") {
		t.Fatalf("nix-store --add printed %q", p)
	}
	if got := g.mustRun(t, "nix-store", "-q", "--hash", p); !strings.HasPrefix(got, "sha256:") {
		t.Errorf("nix-store -q --hash: %q", got)
	}
	if got := g.mustRun(t, "nix-store", "-q", "--references", p); got != "" {
		t.Errorf("references of a plain file: %q", got)
	}
	if got := g.mustRun(t, "nix", "path-info", p); got != p {
		t.Errorf("nix path-info: %q, want %q", got, p)
	}
	if got := g.mustRun(t, "nix-store", "--export", p); !strings.Contains(got, "query me") {
		t.Errorf("nix-store --export (NarFromPath) lacks the file's contents: %q", got)
	}
	if _, errOut, err := g.run(t, "nix-store", "-q", "--hash", "/nix/store/00000000000000000000000000000000-absent"); err == nil || !strings.Contains(errOut, "is not valid") {
		t.Errorf("query of an absent path: err=%v, stderr %q; want the daemon's own 'is not valid'", err, errOut)
	}
	for _, e := range g.log.all() {
		if e.Decision != sessionlog.Allow {
			t.Errorf("query session has a non-allow entry: %+v", e)
		}
	}
	if n := len(g.log.find("QueryPathInfo", sessionlog.Allow)); n == 0 {
		t.Errorf("no QueryPathInfo decision logged; log: %+v", g.log.all())
	}
}

func TestLiveBuildRefusedOnUnsandboxedHost(t *testing.T) {
	e := live(t)
	h := e.probe(t)
	if h.Sandbox.Sandboxed() {
		t.Skipf("the daemon at %s sandboxes builds; this test needs one that does not (see TestLiveSandboxedDaemon)", e.socket)
	}
	marker := filepath.Join(os.TempDir(), unique(t, "escaped"))
	t.Cleanup(func() { _ = os.Remove(marker) })
	g := startGate(t, e, Config{Host: h})
	drv := g.instantiate(t, shellDrv, map[string]string{
		"name":   unique(t, "escape"),
		"script": "echo escaped > " + marker + "; echo done > $out",
	})

	_, errOut, err := g.run(t, "nix-build", drv)
	if err == nil {
		t.Fatalf("nix-build of a derivation on a sandbox = %s daemon succeeded through the gateway", h.Sandbox)
	}
	for _, want := range []string{"claude-sandbox refused building " + drv, "sandbox = " + string(h.Sandbox), "--nix-unsandboxed-builds", "nix-unsandboxed-builds = true"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("nix-build's error lacks %q:\n%s", want, errOut)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatalf("the builder ran on the host: %s exists", marker)
	}
	_, errOut, err = g.run(t, "nix-store", "--realise", drv)
	if err == nil || !strings.Contains(errOut, "claude-sandbox refused building") {
		t.Errorf("nix-store --realise: err=%v\n%s", err, errOut)
	}
	refused := g.log.find("BuildPaths", sessionlog.Refuse)
	if len(refused) != 2 || refused[0].Rule != RuleUnsandboxedBuilds || refused[0].Target != drv {
		t.Errorf("want two refusals of BuildPaths for %s under %s, got %+v", drv, RuleUnsandboxedBuilds, refused)
	}
	// BuildPathsWithResults (what `nix build` sends) is judged the same way.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if c, err := nixdaemon.Dial(ctx, g.socket); err != nil {
		t.Error(err)
	} else {
		defer c.Close()
		var de *nixdaemon.DaemonError
		if c.ProtocolVersion().Minor() >= 34 {
			_, err = c.BuildPathsWithResults(ctx, nixdaemon.DerivationOutputs(drv))
			if !errors.As(err, &de) || !strings.Contains(de.Message, "claude-sandbox refused building "+drv) {
				t.Errorf("BuildPathsWithResults: %v", err)
			}
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatalf("the builder ran on the host: %s exists", marker)
	}

	// With the opt-in the same build runs, on the host.
	g2 := startGate(t, e, Config{Host: h, AllowUnsandboxedBuilds: true})
	out := g2.mustRun(t, "nix-build", "--no-out-link", drv)
	if b, err := os.ReadFile(out); err != nil || string(b) != "done\n" {
		t.Errorf("output %s: %q, %v", out, b, err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("with the opt-in the builder should have run unsandboxed on the host: %v", err)
	}
	if allowed := g2.log.find("BuildPaths", sessionlog.Allow); len(allowed) != 1 || allowed[0].Rule != RuleUnsandboxedBuilds {
		t.Errorf("want one BuildPaths allowed under %s, got %+v", RuleUnsandboxedBuilds, g2.log.all())
	}
}

const fixedOutputDrv = `{ name, content, hash, url }: derivation {
  inherit name;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "printf %s \"$content\" > $out" ];
  inherit content;
  urls = [ url ];
  outputHashMode = "flat";
  outputHashAlgo = "sha256";
  outputHash = hash;
}`

func TestLiveFixedOutputNeedsNetwork(t *testing.T) {
	e := live(t)
	h := e.probe(t)
	content := unique(t, "fixed-output-content")
	sum := sha256.Sum256([]byte(content))
	args := map[string]string{
		"name": unique(t, "fod"), "content": content, "hash": hex.EncodeToString(sum[:]),
		"url": "https://example.org/" + content,
	}
	// The opt-in is given so that only the fixed-output rule can refuse,
	// whatever the host daemon's sandbox setting.
	g := startGate(t, e, Config{Host: h, AllowUnsandboxedBuilds: true, Network: false})
	drv := g.instantiate(t, fixedOutputDrv, args)
	_, errOut, err := g.run(t, "nix-build", "--no-out-link", drv)
	if err == nil {
		t.Fatal("a fixed-output derivation was built through a gateway whose sandbox has no network")
	}
	for _, want := range []string{"claude-sandbox refused building the fixed-output derivation " + drv, args["url"], "no network", RuleFixedOutput} {
		if !strings.Contains(errOut, want) {
			t.Errorf("nix-build's error lacks %q:\n%s", want, errOut)
		}
	}

	// The egress allowlist's seam sees the URLs and decides.
	var asked []string
	g2 := startGate(t, e, Config{Host: h, AllowUnsandboxedBuilds: true, Network: true,
		FetchPolicy: func(drvPath string, urls []string) (bool, string) {
			asked = append(asked, drvPath+" "+strings.Join(urls, ","))
			return false, "net-allow: (no rule for example.org)"
		}})
	_, errOut, err = g2.run(t, "nix-build", "--no-out-link", drv)
	if err == nil || !strings.Contains(errOut, "net-allow: (no rule for example.org)") {
		t.Errorf("FetchPolicy refusal: err=%v\n%s", err, errOut)
	}
	if len(asked) != 1 || asked[0] != drv+" "+args["url"] {
		t.Errorf("FetchPolicy asked %q, want once for %s with %s", asked, drv, args["url"])
	}

	// With the network open it builds.
	g3 := startGate(t, e, Config{Host: h, AllowUnsandboxedBuilds: true, Network: true})
	out := g3.mustRun(t, "nix-build", "--no-out-link", drv)
	if b, err := os.ReadFile(out); err != nil || string(b) != content {
		t.Errorf("output %s: %q, %v", out, b, err)
	}
}

func TestLivePrivilegedSettingRefused(t *testing.T) {
	e := live(t)
	h := e.probe(t)
	g := startGate(t, e, Config{Host: h})
	for _, opt := range [][2]string{
		{"substituters", "http://127.0.0.1:1/evil"},
		{"sandbox", "false"},
		{"post-build-hook", "/tmp/x"},
		{"require-sigs", "false"},
	} {
		_, errOut, err := g.run(t, "nix-store", "-q", "--option", opt[0], opt[1], "--hash", "/nix/store/00000000000000000000000000000000-absent")
		if err == nil {
			t.Errorf("--option %s was accepted", opt[0])
			continue
		}
		for _, want := range []string{"claude-sandbox refused the Nix setting '" + opt[0] + "'", RulePrivilegedSetting} {
			if !strings.Contains(errOut, want) {
				t.Errorf("--option %s: error lacks %q:\n%s", opt[0], want, errOut)
			}
		}
	}
	// What an untrusted user may set still works.
	g.mustRun(t, "nix-store", "-q", "--option", "connect-timeout", "5", "--option", "builders", "", "--hash", g.mustRun(t, "nix-store", "--add", writeTemp(t, "settings")))
	if n := len(g.log.find("SetOptions", sessionlog.Refuse)); n != 4 {
		t.Errorf("want 4 SetOptions refusals, got %d: %+v", n, g.log.all())
	}
}

func writeTemp(t *testing.T, what string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), unique(t, what))
	if err := os.WriteFile(p, []byte(what+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLiveProtocolClient drives the gateway with our own client and with
// raw bytes: replies relayed byte for byte (a NAR included), one log entry
// per operation, and an unknown operation refused with a Nix error.
func TestLiveProtocolClient(t *testing.T) {
	e := live(t)
	h := e.probe(t)
	g := startGate(t, e, Config{Host: h})
	p := g.mustRun(t, "nix-store", "--add", writeTemp(t, "nar-relay"))
	before := len(g.log.all())

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	direct, err := nixdaemon.Dial(ctx, e.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	via, err := nixdaemon.Dial(ctx, g.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer via.Close()
	if via.ProtocolVersion() != direct.ProtocolVersion() {
		t.Errorf("negotiated %s through the gateway, %s directly", via.ProtocolVersion(), direct.ProtocolVersion())
	}
	if via.ProtocolVersion().Minor() >= 35 && via.Trust() != nixdaemon.TrustNotTrusted {
		t.Errorf("the gateway told its client trust %s, want not trusted", via.Trust())
	}
	if err := via.SetOptions(ctx, nixdaemon.DefaultSettings()); err != nil {
		t.Fatal(err)
	}
	if ok, err := via.IsValidPath(ctx, p); err != nil || !ok {
		t.Fatalf("IsValidPath(%s) = %v, %v", p, ok, err)
	}
	wantInfo, err := direct.QueryPathInfo(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	gotInfo, err := via.QueryPathInfo(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(*gotInfo) != fmt.Sprint(*wantInfo) {
		t.Errorf("QueryPathInfo through the gateway:\n%+v\ndirectly:\n%+v", *gotInfo, *wantInfo)
	}
	var wantNAR, gotNAR bytes.Buffer
	if err := direct.NarFromPath(ctx, p, &wantNAR); err != nil {
		t.Fatal(err)
	}
	if err := via.NarFromPath(ctx, p, &gotNAR); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotNAR.Bytes(), wantNAR.Bytes()) || !bytes.Contains(gotNAR.Bytes(), []byte("nar-relay")) {
		t.Errorf("NarFromPath through the gateway differs from the daemon's (%d vs %d bytes)", gotNAR.Len(), wantNAR.Len())
	}
	// A build of a valid path runs nothing: allowed on any host.
	if via.ProtocolVersion().Minor() >= 34 {
		res, err := via.BuildPathsWithResults(ctx, nixdaemon.OpaquePath(p))
		if err != nil || len(res) != 1 || res[0].Err() != nil {
			t.Errorf("BuildPathsWithResults of a valid path: %v, %+v", err, res)
		}
	} else if err := via.BuildPaths(ctx, nixdaemon.OpaquePath(p)); err != nil {
		t.Errorf("BuildPaths of a valid path: %v", err)
	}
	if got := g.log.all()[before:]; len(got) != 5 {
		t.Errorf("want one entry per operation (5), got %d: %+v", len(got), got)
	}

	// An operation the gateway does not know, in raw bytes.
	before = len(g.log.all())
	conn, err := net.Dial("unix", g.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	v := rawHandshake(t, conn)
	writeWords(t, conn, 48)
	msg := readRawError(t, conn, v)
	for _, want := range []string{"claude-sandbox refused worker operation 48", RuleUnknownOp} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal of op 48 lacks %q: %q", want, msg)
		}
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("the connection stayed open after an operation of unknown length")
	}
	got := g.log.all()[before:]
	if len(got) != 1 || got[0].Decision != sessionlog.Refuse || got[0].Rule != RuleUnknownOp || got[0].Op != "Op(48)" {
		t.Errorf("want one refusal of Op(48) logged, got %+v", got)
	}
}

func writeWords(t *testing.T, w net.Conn, words ...uint64) {
	t.Helper()
	var b bytes.Buffer
	for _, n := range words {
		_ = wire.WriteUint64(&b, n)
	}
	if _, err := w.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
}

func readWord(t *testing.T, r net.Conn) uint64 {
	t.Helper()
	n, err := wire.ReadUint64(r)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func readRawString(t *testing.T, r net.Conn) string {
	t.Helper()
	s, err := wire.ReadString(r, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rawHandshake is a client handshake at 1.34 (what both Nix 2.8 and
// current daemons speak), written out by hand.
func rawHandshake(t *testing.T, c net.Conn) uint64 {
	t.Helper()
	writeWords(t, c, 0x6e697863, 1<<8|34)
	if m := readWord(t, c); m != 0x6478696f {
		t.Fatalf("magic %#x", m)
	}
	v := min(readWord(t, c), 1<<8|34)
	writeWords(t, c, 0, 0) // CPU affinity: none; reserveSpace: false
	if v&0xff >= 33 {
		readRawString(t, c)
	}
	if m := readWord(t, c); m != 0x616c7473 {
		t.Fatalf("want STDERR_LAST after the handshake, got %#x", m)
	}
	return v
}

func readRawError(t *testing.T, c net.Conn, v uint64) string {
	t.Helper()
	if m := readWord(t, c); m != 0x63787470 {
		t.Fatalf("want STDERR_ERROR, got %#x", m)
	}
	if v&0xff < 26 {
		msg := readRawString(t, c)
		readWord(t, c)
		return msg
	}
	if typ := readRawString(t, c); typ != "Error" {
		t.Fatalf("error type %q", typ)
	}
	readWord(t, c)
	readRawString(t, c)
	msg := readRawString(t, c)
	if pos, traces := readWord(t, c), readWord(t, c); pos != 0 || traces != 0 {
		t.Fatalf("havePos %d, traces %d", pos, traces)
	}
	return msg
}

// TestLiveSandboxedDaemon: where the host daemon sandboxes builds, a
// substitution-free build of an input-addressed derivation works through
// the gateway, and its builder stays inside the daemon's sandbox.
//
// It needs a daemon with sandbox = true. NIXGATE_TEST_SANDBOXED_SOCKET
// (with NIXGATE_TEST_SANDBOXED_CONF_DIR) names one; otherwise, as root, the
// test starts a second nix-daemon on the same store with its own
// NIX_CONF_DIR saying sandbox = true and its own socket (nix-daemon forks
// per connection, so two listeners on one store are what one daemon does
// anyway). The builder must be in the store for a sandboxed build to see
// it: static busybox (Debian's busybox-static), added as <dir>/busybox so
// that busybox recognises its own name.
func TestLiveSandboxedDaemon(t *testing.T) {
	e := live(t)
	e.socket = os.Getenv("NIXGATE_TEST_SANDBOXED_SOCKET")
	e.confDir = os.Getenv("NIXGATE_TEST_SANDBOXED_CONF_DIR")
	if e.socket == "" {
		e.socket, e.confDir = startSandboxedDaemon(t, e, "")
	}
	h := e.probe(t)
	if h.Sandbox != SandboxOn {
		t.Fatalf("the daemon at %s reports sandbox = %q, want true", e.socket, h.Sandbox)
	}
	// The probe build sees the sandbox for real.
	pctx, pcancel := context.WithTimeout(context.Background(), time.Minute)
	defer pcancel()
	verified, err := ProbeHost(pctx, ProbeOptions{Socket: e.socket, Nix: e.tool("nix"), ConfDir: e.confDir, VerifySandbox: true})
	if err != nil || verified.Sandbox != SandboxOn || !verified.SandboxVerified {
		t.Errorf("ProbeHost with VerifySandbox: %v; sandbox %q, verified %v (%s)", err, verified.Sandbox, verified.SandboxVerified, verified.SandboxProbe)
	}

	g := startGate(t, e, Config{Host: h}) // no opt-in, no network
	bb := addBusybox(t, g)

	marker := filepath.Join(os.TempDir(), unique(t, "sandboxed-escape"))
	t.Cleanup(func() { _ = os.Remove(marker) })
	drv := g.instantiate(t, busyboxDrv, map[string]string{
		"name": unique(t, "sandboxed"), "busybox": bb,
		"script": "touch " + marker + " 2>/dev/null; if [ -e /etc/passwd ] && [ -e /usr ]; then echo host > $out; else echo sandboxed > $out; fi",
	})
	out := g.mustRun(t, "nix-build", "--no-out-link", drv)
	if got, err := os.ReadFile(out); err != nil || string(got) != "sandboxed\n" {
		t.Errorf("the build's output %s says %q (%v), want \"sandboxed\"", out, got, err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("the sandboxed builder wrote %s on the host", marker)
	}
	if allowed := g.log.find("BuildPaths", sessionlog.Allow); len(allowed) != 1 || allowed[0].Rule != RuleBuildSandboxed || allowed[0].Target != drv {
		t.Errorf("want one BuildPaths of %s allowed under %s, got %+v", drv, RuleBuildSandboxed, g.log.all())
	}

	// A fixed-output derivation still gets the host's network in a
	// sandboxed daemon: refused without network.
	content := unique(t, "sandboxed-fod")
	sum := sha256.Sum256([]byte(content))
	fod := g.instantiate(t, fixedOutputDrv, map[string]string{
		"name": unique(t, "sandboxed-fod"), "content": content, "hash": hex.EncodeToString(sum[:]), "url": "https://example.org/x",
	})
	if _, errOut, err := g.run(t, "nix-build", "--no-out-link", fod); err == nil || !strings.Contains(errOut, RuleFixedOutput) {
		t.Errorf("fixed-output build on a sandboxed daemon without network: err=%v\n%s", err, errOut)
	}
}

const busyboxDrv = `{ name, script, busybox }: derivation {
  inherit name;
  system = builtins.currentSystem;
  builder = "${builtins.storePath busybox}/busybox";
  args = [ "sh" "-c" script ];
}`

// addBusybox adds static busybox to the store through g, as
// <dir>/busybox, and returns the directory's store path.
func addBusybox(t *testing.T, g *gate) string {
	t.Helper()
	_, err := os.Stat("/bin/busybox")
	testenv.Require(t, err == nil, "static busybox at /bin/busybox (Debian package busybox-static)")
	bbDir := filepath.Join(t.TempDir(), "busybox-static")
	if err := os.Mkdir(bbDir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bbDir, "busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	return g.mustRun(t, "nix-store", "--add", bbDir)
}

// TestLiveSubstitutionAndFallback: substitution from the daemon's own
// configured cache works through the gateway, with no network and no build
// allowed; --fallback, which would build when a substitution fails, is
// refused there. The cache is a file:// binary cache the test fills.
func TestLiveSubstitutionAndFallback(t *testing.T) {
	e := live(t)
	if os.Getenv("NIXGATE_TEST_SOCKET") != "" {
		t.Skip("starts a second daemon of the default Nix on the default store; not run against another Nix")
	}
	cache := filepath.Join(t.TempDir(), "cache")
	e.socket, e.confDir = startSandboxedDaemon(t, e, "substituters = file://"+cache+"\nrequire-sigs = false\n")
	h := e.probe(t)
	// A host that does not sandbox, no opt-in, no network: only
	// substitution can realise anything.
	h.Sandbox = SandboxOff
	g := startGate(t, e, Config{Host: h})
	bb := addBusybox(t, g)
	drv := g.instantiate(t, busyboxDrv, map[string]string{"name": unique(t, "substituted"), "busybox": bb, "script": "echo built > $out"})
	out := g.mustRun(t, "nix-store", "-q", "--outputs", drv)

	// Build it directly on the daemon, put it in the cache, delete it.
	direct := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(e.tool(name), args...)
		cmd.Env = append(os.Environ(), "NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH="+e.socket)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
		}
	}
	direct("nix-store", "--realise", drv)
	direct("nix", "--extra-experimental-features", "nix-command", "copy", "--to", "file://"+cache, out)
	direct("nix-store", "--delete", out)

	_, errOut, err := g.run(t, "nix-build", "--fallback", "--no-out-link", drv)
	if err == nil || !strings.Contains(errOut, RuleFallback) || !strings.Contains(errOut, "without --fallback") {
		t.Errorf("nix-build --fallback: err=%v\n%s", err, errOut)
	}
	got := g.mustRun(t, "nix-build", "--no-out-link", drv)
	if b, err := os.ReadFile(got); got != out || err != nil || string(b) != "built\n" {
		t.Errorf("substituted %s (want %s): %q, %v", got, out, b, err)
	}
	if allowed := g.log.find("BuildPaths", sessionlog.Allow); len(allowed) != 1 || allowed[0].Rule != RuleSubstitute || allowed[0].Target != out {
		t.Errorf("want one BuildPaths allowed under %s for %s, got %+v", RuleSubstitute, out, g.log.all())
	}
}

func startSandboxedDaemon(t *testing.T, e liveEnv, extraConf string) (socket, confDir string) {
	t.Helper()
	testenv.RequireRoot(t)
	_, err := os.Stat("/bin/busybox")
	testenv.Require(t, err == nil, "static busybox at /bin/busybox (Debian package busybox-static)")
	daemon, err := exec.LookPath(e.tool("nix-daemon"))
	testenv.Require(t, err == nil, "nix-daemon is not installed")
	dir := t.TempDir()
	confDir = filepath.Join(dir, "conf")
	socket = filepath.Join(dir, "socket")
	if err := os.Mkdir(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// sandbox-fallback = false: where the kernel cannot sandbox, fail rather
	// than build unsandboxed and pass for a sandboxed daemon.
	// /bin/sh in the sandbox, as NixOS and Debian 13 provide it, for
	// ProbeHost's probe build.
	conf := "sandbox = true\nsandbox-fallback = false\nsandbox-paths = /bin/sh=/bin/busybox\nbuild-users-group = nixbld\nexperimental-features = nix-command\n" + extraConf
	if !strings.Contains(extraConf, "substituters") {
		conf += "substituters =\n"
	}
	if err := os.WriteFile(filepath.Join(confDir, "nix.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	cmd := exec.Command(daemon)
	for _, kv := range os.Environ() {
		// The daemon must serve its own store, not forward to another.
		if !strings.HasPrefix(kv, "NIX_REMOTE=") && !strings.HasPrefix(kv, "NIX_CONF_DIR=") && !strings.HasPrefix(kv, "NIX_DAEMON_SOCKET_PATH=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "NIX_CONF_DIR="+confDir, "NIX_DAEMON_SOCKET_PATH="+socket)
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("second nix-daemon's log:\n%s", logBuf.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return socket, confDir
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second nix-daemon did not listen on %s", socket)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
