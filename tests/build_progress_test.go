package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// overlayNixpkgs makes a nixpkgs that is the fixture plus packages of the
// test's own, given as name → build script: a user's --nixpkgs can be any
// such tree. The nonce makes every derivation new to the store.
func overlayNixpkgs(t *testing.T, scripts map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	nonce := fmt.Sprint(time.Now().UnixNano())
	var b strings.Builder
	fmt.Fprintf(&b, "args: import %s (args // { overlays = [ (self: super: {\n", fixture)
	for name, script := range scripts {
		// Scripts end in a shell builtin: see NixOS/nix#2176 in closure/realise.go.
		fmt.Fprintf(&b, "  %s = super.runCommand %q { } ''\n    mkdir -p $out\n    %s\n    true\n  '';\n", name, name+"-"+nonce, script)
	}
	b.WriteString("}) ]; })\n")
	os.WriteFile(filepath.Join(dir, "default.nix"), []byte(b.String()), 0o644)
	os.Chmod(dir, 0o755)
	return dir
}

func TestBuildFailureShowsTheFailingLog(t *testing.T) {
	requireSandboxHost(t)
	np := overlayNixpkgs(t, map[string]string{"doomed": "echo compiling the thing; echo the-real-reason >&2; exit 3"})
	r := run(t, runOpts{dirs: freshDirs(t)}, "build", "--nixpkgs", np, "--with", "doomed")
	if r.code != 70 {
		t.Fatalf("a failing build: %s", r)
	}
	if !strings.Contains(r.stderr, "the-real-reason") || !strings.Contains(r.stderr, "builder for") || !strings.Contains(r.stderr, "doomed-") {
		t.Fatalf("the error does not name the failing derivation and its last log lines: %s", r)
	}
}

func TestBuildProgressPlainAndJSON(t *testing.T) {
	requireSandboxHost(t)
	np := overlayNixpkgs(t, map[string]string{"stepone": "echo one", "steptwo": "echo two"})
	r := run(t, runOpts{dirs: freshDirs(t)}, "build", "--nixpkgs", np, "--with", "stepone,steptwo")
	if r.code != 0 {
		t.Fatalf("build: %s", r)
	}
	for _, want := range []string{"derivations to build:", "stepone-", "steptwo-", "finished stepone-", "built "} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("plain progress lacks %q:\n%s", want, r.stderr)
		}
	}
	np = overlayNixpkgs(t, map[string]string{"stepthree": "echo three"})
	r = run(t, runOpts{dirs: freshDirs(t)}, "build", "--nixpkgs", np, "--with", "stepthree", "--log-format", "json")
	if r.code != 0 {
		t.Fatalf("build: %s", r)
	}
	kinds := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("--log-format json printed a non-JSON line %q", line)
		}
		kinds[fmt.Sprint(ev["event"])] = true
	}
	for _, k := range []string{"evaluating", "plan", "build-start", "build-done", "done"} {
		if !kinds[k] {
			t.Errorf("no %q event in %v", k, kinds)
		}
	}
}

// The live display, read off a real terminal: tmux runs the build, and the
// captured pane must show the counts and the derivation names.
func TestBuildProgressOnATerminal(t *testing.T) {
	requireSandboxHost(t)
	tmux := testenv.RequireProgram(t, "tmux")
	np := overlayNixpkgs(t, map[string]string{
		"slowalpha": "sleep 2", "slowbeta": "sleep 2", "slowgamma": "sleep 2",
	})
	d := freshDirs(t)
	session := fmt.Sprintf("csb-progress-%d", time.Now().UnixNano())
	script := fmt.Sprintf("XDG_CACHE_HOME=%s XDG_STATE_HOME=%s %s build --nixpkgs %s --with slowalpha,slowbeta,slowgamma; echo BUILD-EXIT=$?; sleep 600",
		d.cache, d.state, binary, np)
	if out, err := exec.Command(tmux, "-L", session, "new-session", "-d", "-s", session, "-x", "160", "-y", "40", script).CombinedOutput(); err != nil {
		t.Fatalf("tmux: %v\n%s", err, out)
	}
	defer exec.Command(tmux, "-L", session, "kill-server").Run()
	capture := func() string {
		out, _ := exec.Command(tmux, "-L", session, "capture-pane", "-p", "-t", session).Output()
		return string(out)
	}
	var sawLive bool
	var screen string
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		screen = capture()
		for _, line := range strings.Split(screen, "\n") {
			if strings.HasPrefix(line, "building ") && strings.Contains(line, "/6") && strings.Contains(line, "slow") {
				sawLive = true // the live bar: a count out of 6 and a running derivation
			}
		}
		if strings.Contains(screen, "BUILD-EXIT=") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(screen, "BUILD-EXIT=0") {
		t.Fatalf("the build did not finish successfully:\n%s", screen)
	}
	if !sawLive {
		t.Errorf("never saw a live line with a running derivation and a count out of 6:\n%s", screen)
	}
	for _, want := range []string{"6 derivations to build", "slowalpha-", "slowbeta-", "slowgamma-", "built 6 derivations"} {
		if !strings.Contains(screen, want) {
			t.Errorf("the terminal does not show %q:\n%s", want, screen)
		}
	}
}

func TestRealiseWithoutDaemonUsesTheCLI(t *testing.T) {
	requireSandboxHost(t)
	testenv.RequireRoot(t) // only root can use the store without the daemon
	np := overlayNixpkgs(t, map[string]string{"nodaemon": "echo local"})
	r := run(t, runOpts{dirs: freshDirs(t), env: []string{"NIX_REMOTE=local"}}, "build", "--json", "--nixpkgs", np, "--with", "nodaemon")
	if r.code != 0 || !strings.Contains(r.stderr, "finished nodaemon-") {
		t.Fatalf("a build through the nix-store CLI (no daemon): %s", r)
	}
}

// A pushed cache holds the whole closure: every path has a .narinfo whose
// NAR hash is the one the local store records, compressed with zstd unless
// the URL chooses; an unsigned push says consumers will not trust it.
func TestPushToABinaryCache(t *testing.T) {
	requireSandboxHost(t)
	testenv.RequireProgram(t, "nix")
	cache := t.TempDir()
	o := runOpts{dirs: freshDirs(t)}
	r := run(t, o, "build", "--json", "--push", "file://"+cache)
	if r.code != 0 {
		t.Fatalf("build --push: %s", r)
	}
	var summary struct {
		Closures []struct {
			OutPath     string `json:"outPath"`
			ClosureSize uint64 `json:"closureSize"`
		} `json:"closures"`
		Push struct {
			Compression string  `json:"compression"`
			Signed      bool    `json:"signed"`
			Closures    int     `json:"closures"`
			Paths       int     `json:"paths"`
			Pushed      int     `json:"pushed"`
			Bytes       uint64  `json:"bytes"`
			Seconds     float64 `json:"seconds"`
		} `json:"push"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &summary); err != nil || len(summary.Closures) != 1 {
		t.Fatalf("build --json --push printed %q: %v", r.stdout, err)
	}
	b, p := summary.Closures[0], summary.Push
	req, err := exec.Command("nix-store", "--query", "--requisites", b.OutPath).Output()
	if err != nil {
		t.Fatal(err)
	}
	paths := strings.Fields(string(req))
	if len(paths) < 10 {
		t.Fatalf("closure of %d paths: suspiciously small", len(paths))
	}
	if p.Compression != "zstd" || p.Signed || p.Closures != 1 || p.Paths != len(paths) || p.Pushed != len(paths) || p.Bytes != b.ClosureSize || p.Seconds <= 0 {
		t.Errorf("push summary %+v; want zstd, unsigned, 1 closure, %d paths all pushed, %d bytes", p, len(paths), b.ClosureSize)
	}
	for _, want := range []string{"compressed with zstd", "warning: pushing unsigned paths", "--secret-key", fmt.Sprintf("pushed %d paths", len(paths))} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("build --push says nothing of %q:\n%s", want, r.stderr)
		}
	}
	for _, p := range paths {
		hashPart := strings.SplitN(filepath.Base(p), "-", 2)[0]
		f, err := os.Open(filepath.Join(cache, hashPart+".narinfo"))
		if err != nil {
			t.Errorf("%s is not in the pushed cache", p)
			continue
		}
		ni, err := narinfo.Parse(f)
		f.Close()
		if err != nil {
			t.Errorf("%s.narinfo: %v", hashPart, err)
			continue
		}
		local, err := exec.Command("nix-store", "--query", "--hash", p).Output()
		if err != nil {
			t.Fatal(err)
		}
		if ni.StorePath != p || ni.NarHash.String() != strings.TrimSpace(string(local)) || ni.Compression != "zstd" || len(ni.Signatures) != 0 {
			t.Errorf("%s: narinfo says %s %s, compression %q, signatures %v; the store says %s", p, ni.StorePath, ni.NarHash, ni.Compression, ni.Signatures, local)
		}
	}

	// Again: the cache has everything, nothing is sent.
	again := run(t, o, "build", "--push", "file://"+cache)
	if again.code != 0 || !strings.Contains(again.stderr, "the cache has every path already") {
		t.Errorf("a second push to the same cache: %s", again)
	}
	// The URL's choice wins, and is named as such.
	other := t.TempDir()
	none := run(t, o, "build", "--push", "file://"+other+"?compression=none")
	if none.code != 0 || !strings.Contains(none.stderr, "compressed with none (the URL's choice)") {
		t.Errorf("build --push ...?compression=none: %s", none)
	}
	if nars, _ := filepath.Glob(filepath.Join(other, "nar", "*.nar")); len(nars) != len(paths) {
		t.Errorf("compression=none left %d uncompressed NARs, want %d", len(nars), len(paths))
	}

	for _, bad := range [][]string{
		{"--push", "/not/a/url"},
		{"--push", "file://" + other, "--secret-key", filepath.Join(other, "no-such-key")},
		{"--secret-key", filepath.Join(other, "no-such-key")},
	} {
		if r := run(t, o, append([]string{"build"}, bad...)...); r.code != 64 {
			t.Errorf("build %v: %s, want exit 64", bad, r)
		}
	}
}

func TestCacheListAndGC(t *testing.T) {
	requireSandboxHost(t)
	o := runOpts{dirs: freshDirs(t)}
	first := buildJSON(t, o)
	second := buildJSON(t, o, "--with", "jq")
	ls := run(t, o, "cache", "ls", "--json")
	var rows []struct {
		Key         string   `json:"key"`
		Backend     string   `json:"backend"`
		Packages    []string `json:"packages"`
		ClosureSize uint64   `json:"closureSize"`
	}
	if ls.code != 0 || json.Unmarshal([]byte(ls.stdout), &rows) != nil || len(rows) != 2 {
		t.Fatalf("cache ls --json: %s", ls)
	}
	for _, row := range rows {
		if row.ClosureSize == 0 || row.Backend != "bubblewrap" {
			t.Errorf("row %+v", row)
		}
	}
	human := run(t, o, "cache", "ls")
	if !strings.Contains(human.stdout, first.Key[:12]) || !strings.Contains(human.stdout, "jq") {
		t.Errorf("cache ls: %s", human)
	}
	if r := run(t, o, "gc"); r.code != 64 {
		t.Errorf("gc without a limit must refuse: %s", r)
	}
	// Make the first entry the least recently used, then keep one.
	old := time.Now().Add(-48 * time.Hour)
	os.Chtimes(filepath.Join(o.dirs.cache, "claude-sandbox", "index", first.Key+".json"), old, old)
	gc := run(t, o, "gc", "--older-than", "1d")
	if gc.code != 0 || !strings.Contains(gc.stdout, first.Key[:12]) || strings.Contains(gc.stdout, second.Key[:12]) || !strings.Contains(gc.stdout, "nix-collect-garbage") {
		t.Fatalf("gc --older-than 1d: %s", gc)
	}
	if _, err := os.Lstat(filepath.Join(o.dirs.state, "claude-sandbox", "gcroots", first.Key)); err == nil {
		t.Error("the GC root of a dropped entry is still there")
	}
	if again := buildJSON(t, o); again.Cached {
		t.Error("a dropped entry was still a cache hit")
	}
	gc = run(t, o, "gc", "--keep", "0")
	if gc.code != 0 || !strings.Contains(gc.stdout, "2 cached sandboxes dropped") {
		t.Fatalf("gc --keep 0: %s", gc)
	}
}

// build --all makes the original project's six packages: one closure each
// for bubblewrap and container (their network switch is a launch flag) and
// two for the vm (its guest configuration differs with the network).
func TestBuildAllVariants(t *testing.T) {
	requireSandboxHost(t)
	o := runOpts{}
	r := run(t, o, "build", "--all", "--json")
	var results []struct {
		Backend     string `json:"backend"`
		Network     bool   `json:"network"`
		OutPath     string `json:"outPath"`
		ClosureSize uint64 `json:"closureSize"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &results) != nil || len(results) != 4 {
		t.Fatalf("build --all --json: %s", r)
	}
	seen := map[string]bool{}
	for _, res := range results {
		key := fmt.Sprintf("%s/%v", res.Backend, res.Network)
		if seen[key] || !strings.HasPrefix(res.OutPath, "/nix/store/") || res.ClosureSize == 0 {
			t.Errorf("result %+v (duplicate or incomplete)", res)
		}
		seen[key] = true
	}
	for _, want := range []string{"bubblewrap/true", "container/true", "vm/true", "vm/false"} {
		if !seen[want] {
			t.Errorf("no %s closure in %s", want, r.stdout)
		}
	}
	vm := buildJSON(t, o, "vm", "--no-network")
	for _, res := range results {
		if res.Backend == "vm" && !res.Network && (res.OutPath != vm.OutPath || !vm.Cached) {
			t.Errorf("build vm --no-network after --all: %+v, want a cache hit of %s", vm, res.OutPath)
		}
	}
	if r := run(t, o, "build", "--all", "vm"); r.code != 64 {
		t.Errorf("--all with a backend must be refused: %s", r)
	}
}
