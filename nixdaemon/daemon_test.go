package nixdaemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests against the real Nix daemon. They skip where none runs, and fail
// instead when CI is set, since CI starts one.

func needDaemon(t *testing.T) string {
	t.Helper()
	path := SocketPath()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but the Nix daemon socket is unusable: %v", err)
		}
		t.Skipf("no Nix daemon socket (%v); set CI to make this a failure", err)
	}
	return path
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but %s is missing: %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

// recorder collects events; safe for the race detector.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) add(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func dialReal(t *testing.T, opts ...Option) *Client {
	t.Helper()
	path := needDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, path, opts...)
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" && os.Getenv("CI") == "" {
		// A socket we may not use (not in nix-users) or a dead daemon.
		t.Skipf("cannot connect to the Nix daemon (%v); set CI to make this a failure", err)
	}
	if err != nil {
		t.Fatalf("Dial(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// instantiate writes a derivation running script with /bin/sh (the test
// store has the sandbox off) and returns its .drv and out paths. Values
// reach Nix as --argstr, never as source text.
func instantiate(t *testing.T, name, script string) (drv, out string) {
	t.Helper()
	bin := needTool(t, "nix-instantiate")
	const expr = `{ name, script }: derivation {
  inherit name;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" script ];
}`
	cmd := exec.Command(bin, "--argstr", "name", name, "--argstr", "script", script, "-E", expr)
	b, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("nix-instantiate: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("nix-instantiate: %v", err)
	}
	drv = strings.TrimSpace(string(b))
	outs, err := exec.Command(needTool(t, "nix-store"), "--query", "--outputs", drv).Output()
	if err != nil {
		t.Fatalf("nix-store --query --outputs %s: %v", drv, err)
	}
	return drv, strings.TrimSpace(string(outs))
}

func uniqueName(t *testing.T, what string) string {
	return fmt.Sprintf("nixdaemon-test-%s-%d-%d", what, os.Getpid(), time.Now().UnixNano())
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestRealHandshake(t *testing.T) {
	rec := &recorder{}
	c := dialReal(t, WithEvents(rec.add))
	v := c.ProtocolVersion()
	t.Logf("daemon offers %s, negotiated %s, Nix %q, trust %s",
		c.DaemonProtocolVersion(), v, c.DaemonNixVersion(), c.Trust())
	if v < MinDaemonVersion || v > ClientVersion {
		t.Fatalf("negotiated %s outside [%s, %s]", v, MinDaemonVersion, ClientVersion)
	}
	if want := min(c.DaemonProtocolVersion(), ClientVersion); v != want {
		t.Errorf("negotiated %s, want min(daemon, client) = %s", v, want)
	}
	if v.Minor() >= verDaemonNixVersion {
		if c.DaemonNixVersion() == "" {
			t.Errorf("protocol %s but no daemon Nix version", v)
		}
		if nix, err := exec.LookPath("nix-daemon"); err == nil {
			if out, err := exec.Command(nix, "--version").Output(); err == nil &&
				!strings.Contains(string(out), c.DaemonNixVersion()) {
				t.Errorf("daemon says Nix %q, nix-daemon --version says %q", c.DaemonNixVersion(), out)
			}
		}
	}
	if err := c.SetOptions(ctxT(t, 30*time.Second), DefaultSettings()); err != nil {
		t.Fatalf("SetOptions: %v", err)
	}
}

func TestRealBuildFlow(t *testing.T) {
	rec := &recorder{}
	c := dialReal(t, WithEvents(rec.add))
	ctx := ctxT(t, 2*time.Minute)
	if err := c.SetOptions(ctx, DefaultSettings()); err != nil {
		t.Fatalf("SetOptions: %v", err)
	}
	// The output mentions its own path, so it must reference itself.
	drv, out := instantiate(t, uniqueName(t, "flow"), `echo "hi from $out" > $out`)

	// A derivation just instantiated is valid; its output is not yet.
	if ok, err := c.IsValidPath(ctx, drv); err != nil || !ok {
		t.Fatalf("IsValidPath(%s) = %v, %v; want true", drv, ok, err)
	}
	if ok, err := c.IsValidPath(ctx, out); err != nil || ok {
		t.Fatalf("IsValidPath(%s) before build = %v, %v; want false", out, ok, err)
	}
	const madeUp = "/nix/store/00000000000000000000000000000000-nixdaemon-made-up"
	if ok, err := c.IsValidPath(ctx, madeUp); err != nil || ok {
		t.Fatalf("IsValidPath(made up) = %v, %v; want false", ok, err)
	}
	if _, err := c.QueryPathInfo(ctx, madeUp); !errors.Is(err, ErrInvalidPath) {
		t.Fatalf("QueryPathInfo(made up) error = %v, want ErrInvalidPath", err)
	}

	m, err := c.QueryMissing(ctx, DerivationOutputs(drv))
	if err != nil {
		t.Fatalf("QueryMissing: %v", err)
	}
	if !slices.Contains(m.WillBuild, drv) {
		t.Errorf("QueryMissing.WillBuild = %v, want it to contain %s", m.WillBuild, drv)
	}
	if len(m.Unknown) != 0 {
		t.Errorf("QueryMissing.Unknown = %v, want none", m.Unknown)
	}

	if err := c.BuildPaths(ctx, DerivationOutputs(drv)); err != nil {
		t.Fatalf("BuildPaths: %v", err)
	}
	if ok, err := c.IsValidPath(ctx, out); err != nil || !ok {
		t.Fatalf("IsValidPath(%s) after build = %v, %v; want true", out, ok, err)
	}
	checkBuildEvents(t, rec.all(), drv)

	info, err := c.QueryPathInfo(ctx, out)
	if err != nil {
		t.Fatalf("QueryPathInfo(%s): %v", out, err)
	}
	t.Logf("path info: %+v", *info)
	if !strings.HasPrefix(info.NarHash, "sha256:") {
		t.Errorf("NarHash = %q, want sha256:…", info.NarHash)
	}
	if want, err := exec.Command(needTool(t, "nix-store"), "--query", "--hash", out).Output(); err == nil {
		if strings.TrimSpace(string(want)) != info.NarHash {
			t.Errorf("NarHash = %q, nix-store --query --hash says %q", info.NarHash, want)
		}
	}
	if !slices.Contains(info.References, out) {
		t.Errorf("References = %v, want the self-reference %s", info.References, out)
	}
	if info.Deriver != drv {
		t.Errorf("Deriver = %q, want %q", info.Deriver, drv)
	}
	if info.NarSize == 0 || !info.Ultimate || info.CA != "" {
		t.Errorf("NarSize=%d Ultimate=%v CA=%q; want >0, true (built here), \"\"", info.NarSize, info.Ultimate, info.CA)
	}
	if age := time.Since(info.RegistrationTime); age < -time.Minute || age > 10*time.Minute {
		t.Errorf("RegistrationTime = %v, not just now", info.RegistrationTime)
	}

	// The .drv references nothing but is referenced by nothing either: its
	// info comes back too, with no deriver.
	if dinfo, err := c.QueryPathInfo(ctx, drv); err != nil || dinfo.Deriver != "" {
		t.Errorf("QueryPathInfo(drv) = %+v, %v", dinfo, err)
	}

	m, err = c.QueryMissing(ctx, DerivationOutputs(drv))
	if err != nil || len(m.WillBuild) != 0 {
		t.Errorf("QueryMissing after build = %+v, %v; want nothing to build", m, err)
	}

	// GC roots: a temp root, and an indirect one through a symlink.
	if err := c.AddTempRoot(ctx, out); err != nil {
		t.Fatalf("AddTempRoot: %v", err)
	}
	link := filepath.Join(t.TempDir(), "result")
	if err := os.Symlink(out, link); err != nil {
		t.Fatal(err)
	}
	if err := c.AddIndirectRoot(ctx, link); err != nil {
		t.Fatalf("AddIndirectRoot: %v", err)
	}
	if !autoRootFor(t, link) {
		t.Errorf("no link to %s under /nix/var/nix/gcroots/auto after AddIndirectRoot", link)
	}
}

// autoRootFor reports whether the daemon recorded link as an indirect root
// (a symlink to it in gcroots/auto). Where that directory is unreadable it
// says true, having nothing to check.
func autoRootFor(t *testing.T, link string) bool {
	const dir = "/nix/var/nix/gcroots/auto"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Logf("cannot check %s: %v", dir, err)
		return true
	}
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && target == link {
			return true
		}
	}
	return false
}

func checkBuildEvents(t *testing.T, events []Event, drv string) {
	t.Helper()
	started := map[uint64]Event{}
	stopped := map[uint64]bool{}
	var buildAct *Event
	for _, e := range events {
		switch e.Kind {
		case EventStartActivity:
			started[e.ActivityID] = e
			if e.Type == ActBuild && len(e.Fields) > 0 && e.Fields[0] == drv {
				e := e
				buildAct = &e
			}
		case EventStopActivity:
			stopped[e.ActivityID] = true
		}
	}
	if buildAct == nil {
		t.Fatalf("no %s activity for %s among %d events: %+v", ActBuild, drv, len(events), events)
	}
	if !stopped[buildAct.ActivityID] {
		t.Errorf("build activity %d started but never stopped", buildAct.ActivityID)
	}
	if !strings.Contains(buildAct.Text, drv) {
		t.Errorf("build activity text %q does not name %s", buildAct.Text, drv)
	}
	if buildAct.Parent != 0 {
		if _, ok := started[buildAct.Parent]; !ok {
			t.Errorf("build activity parent %d never started", buildAct.Parent)
		}
	}
}

func TestRealBuildPathsWithResults(t *testing.T) {
	c := dialReal(t)
	if c.ProtocolVersion().Minor() < verBuildWithResults {
		if _, err := c.BuildPathsWithResults(ctxT(t, time.Minute), OpaquePath("/nix/store/x")); !errors.As(err, new(*UnsupportedError)) {
			t.Fatalf("old daemon: err = %v, want UnsupportedError", err)
		}
		t.Skipf("daemon protocol %s has no BuildPathsWithResults", c.ProtocolVersion())
	}
	ctx := ctxT(t, 2*time.Minute)
	// Without keep-going the daemon would cancel the good build when the
	// bad one fails.
	s := DefaultSettings()
	s.KeepGoing = true
	if err := c.SetOptions(ctx, s); err != nil {
		t.Fatalf("SetOptions: %v", err)
	}
	drv, out := instantiate(t, uniqueName(t, "results"), `echo hi > $out`)
	bad, _ := instantiate(t, uniqueName(t, "fails"), `echo "nixdaemon test failure" >&2; exit 3`)

	res, err := c.BuildPathsWithResults(ctx, DerivationOutputs(drv), DerivationOutputs(bad))
	if err != nil {
		t.Fatalf("BuildPathsWithResults: %v", err)
	}
	if len(res) != 2 {
		t.Fatalf("got %d results, want 2: %+v", len(res), res)
	}
	byDrv := map[string]BuildResult{}
	for _, r := range res {
		byDrv[r.Path.Path] = r
	}
	good := byDrv[drv]
	if good.Status != BuildBuilt || good.Err() != nil {
		t.Errorf("result for %s: status %s, err %v", drv, good.Status, good.Err())
	}
	if got := good.BuiltOutputs["out"]; got != out {
		t.Errorf("BuiltOutputs = %v, want out = %s", good.BuiltOutputs, out)
	}
	if good.StopTime.Before(good.StartTime) || good.StartTime.IsZero() {
		t.Errorf("times %v..%v", good.StartTime, good.StopTime)
	}
	failed := byDrv[bad]
	if failed.Status.Success() || failed.Err() == nil {
		t.Errorf("result for failing %s: %+v", bad, failed)
	}
	t.Logf("failure reported as: %v", failed.Err())

	// Building again: already valid.
	res, err = c.BuildPathsWithResults(ctx, DerivationOutputs(drv))
	if err != nil || len(res) != 1 || res[0].Status != BuildAlreadyValid {
		t.Errorf("rebuild = %+v, %v; want one already-valid result", res, err)
	}
}

func TestRealBuildFailureIsDaemonError(t *testing.T) {
	c := dialReal(t)
	ctx := ctxT(t, 2*time.Minute)
	drv, _ := instantiate(t, uniqueName(t, "fail"), `echo "nixdaemon expected failure" >&2; exit 1`)
	err := c.BuildPaths(ctx, DerivationOutputs(drv))
	var de *DaemonError
	if !errors.As(err, &de) {
		t.Fatalf("BuildPaths of a failing derivation: err = %v, want *DaemonError", err)
	}
	if !strings.Contains(de.Message, drv) && !strings.Contains(de.Message, "failed") {
		t.Errorf("DaemonError message %q names neither the drv nor a failure", de.Message)
	}
	t.Logf("daemon error: %v", err)
	// The connection survives a daemon error.
	if ok, err := c.IsValidPath(ctx, drv); err != nil || !ok {
		t.Fatalf("IsValidPath after a daemon error = %v, %v", ok, err)
	}
	// A malformed path is the daemon's error too, not ours.
	if _, err := c.IsValidPath(ctx, "/not/a/store/path"); !errors.As(err, &de) {
		t.Errorf("IsValidPath(bad path) err = %v, want *DaemonError", err)
	}
}

func TestRealContextDeadline(t *testing.T) {
	c := dialReal(t)
	drv, _ := instantiate(t, uniqueName(t, "slow"), `/bin/sleep 60; echo > $out`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err := c.BuildPaths(ctx, DerivationOutputs(drv))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("BuildPaths past its deadline: err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v to give up", d)
	}
	if _, err := c.IsValidPath(context.Background(), drv); !errors.Is(err, ErrClosed) {
		t.Errorf("call after a deadline: err = %v, want ErrClosed", err)
	}
}
