package tests

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
)

// BenchmarkLaunch times, side by side in one run, the ways to start `true`
// in the sandbox: a warm claude-sandbox launch, a bare bwrap with the very
// same arguments (the floor), the least a Go launcher can do (execfloor:
// read the finished invocation, exec bwrap) and evaluating with nix-build
// then exec'ing bwrap (what a tool without a cache pays every time).
//
// The warm launch takes nixpkgs from the store, as a user's does (the
// flake's pinned nixpkgs, a channel, the flake registry all resolve to a
// store path). warm-local-tree-ms is the same launch with nixpkgs as a
// local directory (the fixture, 56 files), which each launch re-checks.
//
//	go test ./tests -run '^$' -bench 'Launch$' -benchtime 30x
func BenchmarkLaunch(b *testing.B) {
	rig := newLaunchRig(b, "true")
	localTreeEnv := append(append([]string(nil), rig.env...), "CLAUDE_SANDBOX_NIXPKGS="+fixture)
	warmLocalTree := func() time.Duration { return rig.timeIt(localTreeEnv, nil, binary, rig.launchArgs...) }
	expr := filepath.Join(b.TempDir(), "sandbox.nix")
	printed := run(b, runOpts{}, "build", "--print-expr")
	os.WriteFile(expr, []byte(printed.stdout), 0o644)
	evalThenExec := func() time.Duration {
		start := time.Now()
		if out, err := exec.Command("nix-build", "--no-out-link", expr).CombinedOutput(); err != nil {
			b.Fatalf("nix-build: %v\n%s", err, out)
		}
		return time.Since(start) + rig.bareBwrap()
	}

	// CLAUDE_SANDBOX_BENCH_BASELINE names another claude-sandbox (an
	// earlier commit's) to time beside this one, on the same launch.
	baseline := os.Getenv("CLAUDE_SANDBOX_BENCH_BASELINE")
	warmBaseline := func() time.Duration {
		return rig.timeIt(append(rig.env, "CLAUDE_SANDBOX_NIXPKGS="+rig.storeNixpkgs), nil, baseline, rig.launchArgs...)
	}
	rig.warmLaunch() // first touches of page cache are not what a user repeats
	warmLocalTree()
	rig.bareBwrap()
	rig.goExecFloor()
	if baseline != "" {
		warmBaseline()
	}
	// The same launch without protection (no placeholders, no read-only
	// mounts): what protection costs, side by side.
	unprotectedArgs := append([]string{"exec", "--protect=false"}, rig.launchArgs[1:]...)
	warmUnprotected := func() time.Duration {
		return rig.timeIt(append(rig.env, "CLAUDE_SANDBOX_NIXPKGS="+rig.storeNixpkgs), nil, binary, unprotectedArgs...)
	}
	warmUnprotected()
	var warm, local, bare, goFloor, eval, base time.Duration
	var warmSamples, baseSamples, unprotectedSamples []time.Duration
	evals := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := rig.warmLaunch()
		warm += w
		warmSamples = append(warmSamples, w)
		if baseline != "" {
			d := warmBaseline()
			base += d
			baseSamples = append(baseSamples, d)
		}
		unprotectedSamples = append(unprotectedSamples, warmUnprotected())
		bare += rig.bareBwrap()
		goFloor += rig.goExecFloor()
		local += warmLocalTree()
		if i < 5 { // nix-build costs seconds; a few samples are enough
			eval += evalThenExec()
			evals++
		}
	}
	b.StopTimer()
	b.ReportMetric(ms(warm, b.N), "warm-ms")
	b.ReportMetric(ms(local, b.N), "warm-local-tree-ms")
	b.ReportMetric(ms(bare, b.N), "bare-bwrap-ms")
	b.ReportMetric(ms(goFloor, b.N), "go-exec-floor-ms")
	b.ReportMetric(ms(eval, evals), "eval-then-exec-ms")
	b.ReportMetric(ms(warm, b.N)/ms(bare, b.N), "warm/bare")
	b.ReportMetric(ms(goFloor, b.N)/ms(bare, b.N), "floor/bare")
	b.ReportMetric(ms(eval, evals)/ms(warm, b.N), "eval/warm")
	b.ReportMetric(median(warmSamples), "warm-median-ms")
	b.ReportMetric(median(unprotectedSamples), "warm-unprotected-median-ms")
	b.ReportMetric(median(warmSamples)-median(unprotectedSamples), "protection-median-ms")
	if baseline != "" {
		b.ReportMetric(ms(base, b.N), "baseline-ms")
		b.ReportMetric(median(baseSamples), "baseline-median-ms")
		b.ReportMetric(median(warmSamples)-median(baseSamples), "warm-minus-baseline-median-ms")
	}
	b.ReportMetric(0, "ns/op")
}

// median of durations, in milliseconds.
func median(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[len(s)/2].Microseconds()) / 1000
}

// BenchmarkLaunchClaude is BenchmarkLaunch for what a user starts: Claude
// Code itself (`claude --version`, its whole start-up), warm launch against
// a bare bwrap of the same invocation.
//
//	go test ./tests -run '^$' -bench LaunchClaude -benchtime 10x
func BenchmarkLaunchClaude(b *testing.B) {
	rig := newLaunchRig(b, "claude", "--version")
	rig.warmLaunch()
	rig.bareBwrap()
	var warm, bare time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		warm += rig.warmLaunch()
		bare += rig.bareBwrap()
	}
	b.StopTimer()
	b.ReportMetric(ms(warm, b.N), "warm-ms")
	b.ReportMetric(ms(bare, b.N), "bare-bwrap-ms")
	b.ReportMetric(ms(warm, b.N)/ms(bare, b.N), "warm/bare")
	b.ReportMetric(0, "ns/op")
}

func ms(d time.Duration, n int) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }

// launchRig runs one command in a warm sandbox three ways: through
// claude-sandbox, as the bare bwrap invocation claude-sandbox would exec
// (from --dry-run), and through execfloor.
type launchRig struct {
	b          *testing.B
	env        []string // claude-sandbox's, without CLAUDE_SANDBOX_NIXPKGS
	launchArgs []string
	inv        struct {
		Path string   `json:"path"`
		Args []string `json:"args"`
		Env  []string `json:"env"`
		// Descriptors 3, 4, … (the seccomp filter, the ~/.claude.json copy).
		Files []struct {
			Data   []byte `json:"data"`
			Source string `json:"source"`
		} `json:"files"`
		Session []string `json:"session"`
	}
	invFile, floor, storeNixpkgs string
}

func newLaunchRig(b *testing.B, command ...string) *launchRig {
	requireSandboxHost(b)
	rig := &launchRig{b: b}
	p := project(b)
	rig.launchArgs = append([]string{"exec", p, "--"}, command...)
	rig.storeNixpkgs = addToStore(b, fixture)
	fromStore := runOpts{env: []string{"CLAUDE_SANDBOX_NIXPKGS=" + rig.storeNixpkgs}}
	if buildJSON(b, fromStore).OutPath != buildJSON(b, runOpts{}).OutPath {
		b.Fatal("the fixture in the store and as a directory built different sandboxes")
	}
	rig.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "USER=" + os.Getenv("USER"),
		"XDG_CACHE_HOME=" + sharedDirs().cache, "XDG_STATE_HOME=" + sharedDirs().state,
		"XDG_CONFIG_HOME=" + filepath.Join(workDir, "no-config")}
	dry := run(b, fromStore, append([]string{"exec", "--dry-run"}, rig.launchArgs[1:]...)...)
	if dry.code != 0 || json.Unmarshal([]byte(dry.stdout), &rig.inv) != nil {
		b.Fatalf("--dry-run: %s", dry)
	}
	// The bare bwrap runs the session's command itself, in the project,
	// where claude-sandbox's bwrap runs a keeper that the session joins:
	// the floor is a sandbox that runs the command and ends.
	rig.inv.Args = withoutRunDirMounts(rig.inv.Args)
	if n := len(rig.inv.Args); len(rig.inv.Session) > 0 && n > 0 {
		rig.inv.Args = append(rig.inv.Args[:n-1:n-1], rig.inv.Session...)
		for i, a := range rig.inv.Args {
			if a == "--chdir" && i+1 < len(rig.inv.Args) {
				rig.inv.Args[i+1] = p
				break
			}
		}
	}
	invJSON, _ := json.Marshal(rig.inv)
	rig.invFile = filepath.Join(b.TempDir(), "invocation.json")
	os.WriteFile(rig.invFile, invJSON, 0o644)
	rig.floor = filepath.Join(b.TempDir(), "execfloor")
	build := exec.Command("go", "build", "-o", rig.floor, "./execfloor")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as claude-sandbox is built
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("building execfloor: %v\n%s", err, out)
	}
	return rig
}

func (r *launchRig) warmLaunch() time.Duration {
	return r.timeIt(append(r.env, "CLAUDE_SANDBOX_NIXPKGS="+r.storeNixpkgs), nil, binary, r.launchArgs...)
}

func (r *launchRig) bareBwrap() time.Duration {
	return r.timeIt(r.inv.Env, r.extraFiles(), r.inv.Path, r.inv.Args[1:]...)
}

func (r *launchRig) goExecFloor() time.Duration {
	return r.timeIt(nil, r.extraFiles(), r.floor, r.invFile)
}

// extraFiles gives bare bwrap the descriptors the launcher gives it.
func (r *launchRig) extraFiles() []*os.File {
	var files []*os.File
	for _, f := range r.inv.Files {
		data := f.Data
		if f.Source != "" {
			data, _ = os.ReadFile(f.Source)
		}
		tmp, err := os.CreateTemp(r.b.TempDir(), "fd")
		if err != nil {
			r.b.Fatal(err)
		}
		tmp.Write(data)
		tmp.Seek(0, 0)
		files = append(files, tmp)
	}
	return files
}

func (r *launchRig) timeIt(env []string, files []*os.File, name string, args ...string) time.Duration {
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
		r.b.Fatalf("%s: %v\n%s", name, err, out)
	}
	return time.Since(start)
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

// addToStore copies a directory into the Nix store, as a flake input or a
// channel would be, and returns its store path.
func addToStore(t testing.TB, dir string) string {
	t.Helper()
	out, err := exec.Command("nix-store", "--add", dir).Output()
	if err != nil {
		t.Fatalf("nix-store --add %s: %v", dir, err)
	}
	return strings.TrimSpace(string(out))
}

// withoutRunDirMounts drops from a sandbox's command line the mounts of a
// sandbox's run directory (the doors its supervisor serves, files written
// at start): a --dry-run names them before they exist, and a bare floor
// has no supervisor. bwrap's take a flag and two paths; nspawn's are one
// --bind=SRC:DEST.
func withoutRunDirMounts(args []string) []string {
	runDir := func(a string) bool {
		return strings.Contains(a, sharedDirs().state) && strings.Contains(a, "/run/")
	}
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "--") && strings.Contains(a, "bind") && !strings.Contains(a, "=") && i+1 < len(args) && runDir(args[i+1]) {
			i += 2
			continue
		}
		if strings.HasPrefix(a, "--") && strings.Contains(a, "bind") && runDir(a) {
			continue
		}
		out = append(out, a)
	}
	return out
}

// BenchmarkPush pushes the bubblewrap closure to an empty file:// cache,
// side by side in one run: as `build --push` does by default (zstd) and
// with the URL asking for Nix's own default, compression=xz. It reports
// the seconds and the cache's size on disk of each. Target: the default
// at least 10× faster. xz takes minutes here, hence one iteration:
//
//	go test ./tests -run '^$' -bench Push -benchtime 1x
func BenchmarkPush(b *testing.B) {
	requireSandboxHost(b)
	testenv.RequireProgram(b, "nix")
	buildJSON(b, runOpts{})
	push := func(query string) (time.Duration, float64) {
		cache := b.TempDir()
		start := time.Now()
		// xz on one core: minutes, more on a busy machine.
		if r := run(b, runOpts{timeout: time.Hour}, "build", "--push", "file://"+cache+query); r.code != 0 {
			b.Fatalf("build --push file://%s%s: %s", cache, query, r)
		}
		took := time.Since(start)
		var size int64
		filepath.WalkDir(cache, func(_ string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if info, err := d.Info(); err == nil {
					size += info.Size()
				}
			}
			return nil
		})
		return took, float64(size) / 1e6
	}
	var tDefault, tXz time.Duration
	var mbDefault, mbXz float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t, mb := push("")
		tDefault, mbDefault = tDefault+t, mbDefault+mb
		t, mb = push("?compression=xz")
		tXz, mbXz = tXz+t, mbXz+mb
	}
	s := func(d time.Duration) float64 { return d.Seconds() / float64(b.N) }
	b.ReportMetric(s(tDefault), "default-s")
	b.ReportMetric(s(tXz), "xz-s")
	b.ReportMetric(mbDefault/float64(b.N), "default-MB")
	b.ReportMetric(mbXz/float64(b.N), "xz-MB")
	b.ReportMetric(s(tXz)/s(tDefault), "xz/default")
	b.ReportMetric(0, "ns/op")
}
