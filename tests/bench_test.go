package tests

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
)

// BenchmarkLaunch times, side by side in one run, the three ways to start
// `true` in the sandbox: a warm claude-sandbox launch, a bare bwrap with the
// very same arguments (the floor), and evaluating with nix-build then
// exec'ing bwrap (what a tool without a cache pays every time).
//
//	go test ./tests -run '^$' -bench Launch -benchtime 30x
func BenchmarkLaunch(b *testing.B) {
	requireSandboxHost(b)
	p := project(b)
	buildJSON(b, runOpts{})
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "USER=" + os.Getenv("USER"),
		"XDG_CACHE_HOME=" + sharedDirs().cache, "XDG_STATE_HOME=" + sharedDirs().state, "CLAUDE_SANDBOX_NIXPKGS=" + fixture}

	dry := run(b, runOpts{}, "exec", "--dry-run", p, "--", "true")
	var inv struct {
		Path string   `json:"path"`
		Args []string `json:"args"`
		Env  []string `json:"env"`
		// Descriptors 3, 4, … (the seccomp filter, the ~/.claude.json copy).
		Files []struct {
			Data   []byte `json:"data"`
			Source string `json:"source"`
		} `json:"files"`
	}
	if dry.code != 0 || json.Unmarshal([]byte(dry.stdout), &inv) != nil {
		b.Fatalf("--dry-run: %s", dry)
	}
	expr := filepath.Join(b.TempDir(), "sandbox.nix")
	printed := run(b, runOpts{}, "build", "--print-expr")
	os.WriteFile(expr, []byte(printed.stdout), 0o644)

	// extraFiles gives bare bwrap the descriptors the launcher gives it.
	extraFiles := func() []*os.File {
		var files []*os.File
		for _, f := range inv.Files {
			data := f.Data
			if f.Source != "" {
				data, _ = os.ReadFile(f.Source)
			}
			tmp, err := os.CreateTemp(b.TempDir(), "fd")
			if err != nil {
				b.Fatal(err)
			}
			tmp.Write(data)
			tmp.Seek(0, 0)
			files = append(files, tmp)
		}
		return files
	}
	timeIt := func(env []string, files []*os.File, name string, args ...string) time.Duration {
		cmd := exec.Command(name, args...)
		cmd.Env = env
		cmd.ExtraFiles = files
		defer func() {
			for _, f := range files {
				f.Close()
			}
		}()
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", name, err, out)
		}
		return time.Since(start)
	}
	warmLaunch := func() time.Duration { return timeIt(env, nil, binary, "exec", p, "--", "true") }
	bareBwrap := func() time.Duration { return timeIt(inv.Env, extraFiles(), inv.Path, inv.Args[1:]...) }
	evalThenExec := func() time.Duration {
		start := time.Now()
		if out, err := exec.Command("nix-build", "--no-out-link", expr).CombinedOutput(); err != nil {
			b.Fatalf("nix-build: %v\n%s", err, out)
		}
		return time.Since(start) + bareBwrap()
	}

	warmLaunch() // first touches of page cache are not what a user repeats
	bareBwrap()
	var warm, bare, eval time.Duration
	evals := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		warm += warmLaunch()
		bare += bareBwrap()
		if i < 5 { // nix-build costs seconds; a few samples are enough
			eval += evalThenExec()
			evals++
		}
	}
	b.StopTimer()
	ms := func(d time.Duration, n int) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }
	b.ReportMetric(ms(warm, b.N), "warm-ms")
	b.ReportMetric(ms(bare, b.N), "bare-bwrap-ms")
	b.ReportMetric(ms(eval, evals), "eval-then-exec-ms")
	b.ReportMetric(ms(warm, b.N)/ms(bare, b.N), "warm/bare")
	b.ReportMetric(ms(eval, evals)/ms(warm, b.N), "eval/warm")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkCacheHitCheck compares, side by side, three ways to confirm a
// cached closure is still in the store: the file checks a launch makes, the
// daemon's validity query (what `build` adds), and a nix-store subprocess.
//
//	go test ./tests -run '^$' -bench CacheHitCheck -benchtime 50x
func BenchmarkCacheHitCheck(b *testing.B) {
	requireSandboxHost(b)
	built := buildJSON(b, runOpts{})
	manifestPath := filepath.Join(built.OutPath, "share/claude-sandbox/manifest.json")
	socket := "/nix/var/nix/daemon-socket/socket"
	if _, err := os.Stat(socket); err != nil {
		b.Skip("skipped: no daemon socket")
	}
	stat := func() time.Duration {
		start := time.Now()
		if _, err := os.Stat(manifestPath); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	daemon := func() time.Duration {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := nixdaemon.Dial(ctx, socket)
		if err != nil {
			b.Fatal(err)
		}
		ok, err := c.IsValidPath(ctx, built.OutPath)
		c.Close()
		if err != nil || !ok {
			b.Fatalf("valid=%v err=%v", ok, err)
		}
		return time.Since(start)
	}
	subprocess := func() time.Duration {
		start := time.Now()
		if out, err := exec.Command("nix-store", "--check-validity", built.OutPath).CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		return time.Since(start)
	}
	var tStat, tDaemon, tSub time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tStat += stat()
		tDaemon += daemon()
		tSub += subprocess()
	}
	n := float64(b.N)
	b.ReportMetric(float64(tStat.Microseconds())/n, "stat-us")
	b.ReportMetric(float64(tDaemon.Microseconds())/n, "daemon-us")
	b.ReportMetric(float64(tSub.Microseconds())/n, "nix-store-us")
	b.ReportMetric(float64(tSub)/float64(tDaemon), "nix-store/daemon")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkNoopBuild: `build` of an already built configuration (index
// lookup plus the daemon validity check) beside `version` (process start
// alone). Target: under 2×.
//
//	go test ./tests -run '^$' -bench NoopBuild -benchtime 30x
func BenchmarkNoopBuild(b *testing.B) {
	requireSandboxHost(b)
	buildJSON(b, runOpts{})
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "XDG_CACHE_HOME=" + sharedDirs().cache,
		"XDG_STATE_HOME=" + sharedDirs().state, "CLAUDE_SANDBOX_NIXPKGS=" + fixture}
	timeIt := func(args ...string) time.Duration {
		cmd := exec.Command(binary, args...)
		cmd.Env = env
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %v\n%s", args, err, out)
		}
		return time.Since(start)
	}
	timeIt("build")
	var tBuild, tVersion time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tBuild += timeIt("build")
		tVersion += timeIt("version")
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms(tBuild), "noop-build-ms")
	b.ReportMetric(ms(tVersion), "version-ms")
	b.ReportMetric(ms(tBuild)/ms(tVersion), "build/version")
	b.ReportMetric(0, "ns/op")
}
