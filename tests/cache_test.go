package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

func TestBuildThenCacheHit(t *testing.T) {
	requireSandboxHost(t)
	o := runOpts{dirs: freshDirs(t)}
	first := buildJSON(t, o, "--with", "python3")
	if first.Cached || !strings.HasPrefix(first.OutPath, "/nix/store/") || !strings.HasSuffix(first.DrvPath, ".drv") || len(first.Key) != 64 {
		t.Fatalf("first build: %+v", first)
	}
	if _, err := os.Stat(filepath.Join(first.OutPath, "share/claude-sandbox/manifest.json")); err != nil {
		t.Fatalf("closure has no manifest: %v", err)
	}
	// Same options in another order and spelling: the same entry.
	second := buildJSON(t, o, "--with", "python3,python3", "--no-network")
	if !second.Cached || second.OutPath != first.OutPath || second.Key != first.Key {
		t.Fatalf("second build was not a cache hit of the first: %+v vs %+v", second, first)
	}
	plain := run(t, o, "build", "--with", "python3")
	if plain.code != 0 || strings.TrimSpace(plain.stdout) != first.OutPath {
		t.Fatalf("build prints the store path: %s", plain)
	}
	rebuilt := buildJSON(t, o, "--with", "python3", "--rebuild")
	if rebuilt.Cached || rebuilt.OutPath != first.OutPath {
		t.Fatalf("--rebuild: %+v", rebuilt)
	}
}

func TestPrintedExpressionBuildsByHand(t *testing.T) {
	requireSandboxHost(t)
	o := runOpts{dirs: freshDirs(t)}
	r := run(t, o, "build", "--print-expr", "--with", "python3")
	if r.code != 0 || !strings.Contains(r.stdout, "builtins.fromJSON") {
		t.Fatalf("--print-expr: %s", r)
	}
	file := filepath.Join(t.TempDir(), "sandbox.nix")
	os.WriteFile(file, []byte(r.stdout), 0o644)
	out, err := exec.Command("nix-build", "--no-out-link", file).Output()
	if err != nil {
		t.Fatalf("nix-build of the printed expression: %v", err)
	}
	b := buildJSON(t, o, "--with", "python3")
	if strings.TrimSpace(string(out)) != b.OutPath {
		t.Fatalf("by hand %q, by claude-sandbox %q", out, b.OutPath)
	}
}

// A warm launch runs no Nix: with no nix* program on PATH it still works,
// while a cold one in the same environment fails for want of Nix.
func TestWarmLaunchRunsNoNix(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	buildJSON(t, runOpts{})
	noNix := t.TempDir()
	warm := run(t, runOpts{path: noNix}, "exec", p, "--", "bash", "-c", "echo warm-ok")
	if warm.code != 0 || !strings.Contains(warm.stdout, "warm-ok") {
		t.Fatalf("warm launch without Nix on PATH: %s", warm)
	}
	cold := run(t, runOpts{path: noNix, dirs: freshDirs(t)}, "exec", p, "--", "true")
	if cold.code != 69 || !strings.Contains(cold.stderr, "not found") {
		t.Fatalf("cold launch without Nix should fail with exit 69: %s", cold)
	}
}

func TestConcurrentBuildsRealiseOnce(t *testing.T) {
	requireSandboxHost(t)
	o := runOpts{dirs: freshDirs(t)}
	var wg sync.WaitGroup
	results := make([]built, 3)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = buildJSON(t, o, "--with", "jq")
		}()
	}
	wg.Wait()
	fresh := 0
	for _, r := range results {
		if r.OutPath != results[0].OutPath {
			t.Fatalf("concurrent builds disagree: %+v", results)
		}
		if !r.Cached {
			fresh++
		}
	}
	if fresh != 1 {
		t.Fatalf("%d of %d concurrent builds realised the closure; want exactly 1: %+v", fresh, len(results), results)
	}
}

func TestGarbageCollectionKeepsCachedClosures(t *testing.T) {
	requireSandboxHost(t)
	testenv.RequireRoot(t) // collecting garbage is the machine owner's call
	o := runOpts{dirs: freshDirs(t)}
	b := buildJSON(t, o, "--with", "gnused")
	// A path nothing roots, to prove the collector really ran.
	unrooted, err := exec.Command("nix-build", "--no-out-link", "-E",
		`derivation { name = "claude-sandbox-gc-probe"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ${toString builtins.currentTime} > $out" ]; }`).Output()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nix-collect-garbage").CombinedOutput(); err != nil {
		t.Fatalf("nix-collect-garbage: %v\n%s", err, out)
	}
	if _, err := os.Stat(strings.TrimSpace(string(unrooted))); err == nil {
		t.Fatal("the collector did not collect an unrooted path: the test proves nothing")
	}
	if _, err := os.Stat(b.OutPath); err != nil {
		t.Fatalf("nix-collect-garbage deleted the cached closure %s", b.OutPath)
	}
	r := run(t, runOpts{dirs: o.dirs, path: t.TempDir()}, "exec", "--with", "gnused", project(t), "--", "sed", "--version")
	if r.code != 0 {
		t.Fatalf("the cached closure does not launch after GC: %s", r)
	}
}

func TestUnknownPackageSuggestsNames(t *testing.T) {
	requireSandboxHost(t)
	r := run(t, runOpts{dirs: freshDirs(t)}, "build", "--with", "pyhton3")
	if r.code != 67 || !strings.Contains(r.stderr, "unknown package: pyhton3") || !strings.Contains(r.stderr, "did you mean python3") {
		t.Fatalf("unknown package: %s", r)
	}
	_, errorPart, _ := strings.Cut(r.stderr, "claude-sandbox: unknown")
	if strings.Contains(r.stderr, "while evaluating") || strings.Count(strings.TrimSpace(errorPart), "\n") > 1 {
		t.Fatalf("want one line and a hint, not a Nix trace: %s", r)
	}
	r = run(t, runOpts{dirs: freshDirs(t)}, "build", "--with", "python3Packages")
	if r.code != 67 || !strings.Contains(r.stderr, "not a package") {
		t.Fatalf("a package set passed as a package: %s", r)
	}
}

func TestCorruptCacheEntryIsRebuilt(t *testing.T) {
	requireSandboxHost(t)
	o := runOpts{dirs: freshDirs(t)}
	b := buildJSON(t, o)
	entry := filepath.Join(o.dirs.cache, "claude-sandbox", "index", b.Key+".json")
	data, err := os.ReadFile(entry)
	if err != nil {
		t.Fatal(err)
	}
	for _, damage := range [][]byte{data[:len(data)/2], []byte("\x00\x01garbage"), {}} {
		os.WriteFile(entry, damage, 0o644)
		r := run(t, o, "exec", project(t), "--", "true")
		if r.code != 0 {
			t.Fatalf("a damaged cache entry broke the launch: %s", r)
		}
		var e map[string]any
		if data, _ := os.ReadFile(entry); json.Unmarshal(data, &e) != nil || e["outPath"] != b.OutPath {
			t.Fatalf("the entry was not rewritten: %q", data)
		}
	}
}

func TestKilledBuildLeavesNoEntry(t *testing.T) {
	requireSandboxHost(t)
	o := runOpts{dirs: freshDirs(t)}
	cmd := exec.Command(binary, "build", "--with", "gawk")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"XDG_CACHE_HOME=" + o.dirs.cache, "XDG_STATE_HOME=" + o.dirs.state, "CLAUDE_SANDBOX_NIXPKGS=" + fixture}
	// Its own process group, as a terminal would give it, so the test can
	// wait for the Nix children it leaves to finish dying.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The expression file is written just before Nix starts: kill then.
	exprs := filepath.Join(o.dirs.cache, "claude-sandbox", "exprs")
	deadline := time.Now().Add(time.Minute)
	for {
		if files, _ := os.ReadDir(exprs); len(files) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the build never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	for deadline := time.Now().Add(time.Minute); syscall.Kill(-cmd.Process.Pid, 0) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the killed build's Nix processes are still running after a minute")
		}
	}
	if files, _ := os.ReadDir(filepath.Join(o.dirs.cache, "claude-sandbox", "index")); len(files) > 0 {
		for _, f := range files {
			data, _ := os.ReadFile(filepath.Join(o.dirs.cache, "claude-sandbox", "index", f.Name()))
			t.Errorf("a killed build left an index file %s: %q", f.Name(), data)
		}
	}
	b := buildJSON(t, o, "--with", "gawk")
	if b.Cached {
		t.Fatalf("after a killed build the next run must build, got a hit: %+v", b)
	}
}

func TestNoDaemonIsAClearError(t *testing.T) {
	requireSandboxHost(t)
	r := run(t, runOpts{dirs: freshDirs(t), env: []string{"NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH=/nonexistent/socket"}},
		"build")
	if r.code != 74 || !strings.Contains(r.stderr, "cannot reach the Nix daemon") || !strings.Contains(r.stderr, "hint:") {
		t.Fatalf("no daemon: %s", r)
	}
}

// With user namespaces disabled (user.max_user_namespaces = 0, as inside
// some containers), a launch says so instead of failing inside bwrap. The
// setting is made in a child user namespace, so the host is untouched.
func TestUserNamespacesDisabledIsAClearError(t *testing.T) {
	requireSandboxHost(t)
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "setpriv")
	p := project(t)
	buildJSON(t, runOpts{})
	d := sharedDirs()
	script := `echo 0 > /proc/sys/user/max_user_namespaces || exit 90
exec setpriv --reuid=1000 --regid=1000 --clear-groups -- "$@"`
	try := func(args ...string) result {
		cmd := exec.Command("sh", append([]string{"-c", script, "sh"}, args...)...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=/tmp", "USER=probe",
			"XDG_CACHE_HOME=" + d.cache, "XDG_STATE_HOME=" + d.state, "CLAUDE_SANDBOX_NIXPKGS=" + fixture}
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags:  syscall.CLONE_NEWUSER,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}, {ContainerID: 1000, HostID: 1000, Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}, {ContainerID: 1000, HostID: 1000, Size: 1}},
			// setpriv --clear-groups needs setgroups(2) inside.
			GidMappingsEnableSetgroups: true,
		}
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return result{code, out.String(), errb.String()}
	}
	// Control: bwrap itself really cannot start there.
	if bare := try("bwrap", "--ro-bind", "/", "/", "true"); bare.code == 0 {
		t.Fatalf("bwrap still works with max_user_namespaces=0; the probe proves nothing: %s", bare)
	}
	r := try(binary, "exec", p, "--", "true")
	if r.code != 72 || !strings.Contains(r.stderr, "user namespaces are disabled") || !strings.Contains(r.stderr, "max_user_namespaces") {
		t.Fatalf("disabled user namespaces: %s", r)
	}
}
