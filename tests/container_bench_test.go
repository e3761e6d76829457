package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// BenchmarkContainerLaunch times, side by side in one run, starting `true`
// in the container backend three ways: a warm `claude-sandbox exec
// --backend container` (cache hit, no Nix), a bare systemd-nspawn on the
// same root (the closure's root tree under --volatile=yes, the store
// bound, `true` as the container's only process), and systemd-nspawn run
// by hand with exactly the arguments claude-sandbox gives it (from
// --dry-run): the difference between the last two is the cost of the
// mounts and the init, between the first and the last that of the Go side.
//
//	sudo go test ./tests -run '^$' -bench ContainerLaunch -benchtime 20x
func BenchmarkContainerLaunch(b *testing.B) {
	requireContainerHost(b)
	u := containerUser(b)
	p := userProject(b, u)
	built := buildJSON(b, runOpts{}, "--backend", "container")
	data, err := os.ReadFile(filepath.Join(built.OutPath, "share/claude-sandbox/manifest.json"))
	if err != nil {
		b.Fatal(err)
	}
	var m struct {
		Path      []string
		Container struct{ Root string }
	}
	if err := json.Unmarshal(data, &m); err != nil || len(m.Path) == 0 {
		b.Fatalf("manifest: %v", err)
	}
	env := append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"XDG_CACHE_HOME=" + sharedDirs().cache, "XDG_STATE_HOME=" + sharedDirs().state, "CLAUDE_SANDBOX_NIXPKGS=" + fixture}, u.env()...)

	dry := run(b, runOpts{env: u.env()}, "exec", "--backend", "container", "--dry-run", p, "--", "true")
	var inv struct {
		Path string   `json:"path"`
		Args []string `json:"args"`
		Env  []string `json:"env"`
	}
	if dry.code != 0 || json.Unmarshal([]byte(dry.stdout), &inv) != nil {
		b.Fatalf("--dry-run: %s", dry)
	}
	bare := []string{"--quiet", "--directory=" + m.Container.Root, "--volatile=yes", "--bind-ro=/nix/store", "--console=pipe"}
	if slices.Contains(inv.Args, "--register=no") {
		bare = append(bare, "--register=no", "--keep-unit")
	}
	bare = append(bare, "--", m.Path[0]+"/true")
	nspawnEnv := []string{"PATH=/usr/bin:/bin", "SYSTEMD_NSPAWN_LOCK=0"}

	timeIt := func(env []string, name string, args ...string) time.Duration {
		cmd := exec.Command(name, args...)
		cmd.Env = env
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s %q: %v\n%s", name, args, err, out)
		}
		return time.Since(start)
	}
	warmLaunch := func() time.Duration { return timeIt(env, binary, "exec", "--backend", "container", p, "--", "true") }
	bareNspawn := func() time.Duration { return timeIt(nspawnEnv, inv.Path, bare...) }
	// The container's init keeps it until its standard input ends: here at
	// once (no supervisor), once it has set the root up.
	sameArgs := func() time.Duration { return timeIt(inv.Env, inv.Path, withoutRunDirMounts(inv.Args)[1:]...) }

	warmLaunch() // the first touches of the page cache are not what a user repeats
	bareNspawn()
	sameArgs()
	var warm, floor, same time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		warm += warmLaunch()
		floor += bareNspawn()
		same += sameArgs()
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms(warm), "warm-ms")
	b.ReportMetric(ms(floor), "bare-nspawn-ms")
	b.ReportMetric(ms(same), "same-args-nspawn-ms")
	b.ReportMetric(ms(warm)/ms(floor), "warm/bare")
	b.ReportMetric(ms(warm)/ms(same), "warm/same-args")
	b.ReportMetric(0, "ns/op")
}
