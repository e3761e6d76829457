package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// End-to-end tests of the container backend: real systemd-nspawn, as root,
// with the payload running as an ordinary user, the way `sudo
// claude-sandbox --backend container` runs it (sudo's SUDO_UID, SUDO_GID
// and SUDO_USER are set by the tests). Every probe runs inside the
// container.

func requireContainerHost(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "systemd-nspawn")
	testenv.RequireProgram(t, "nix-instantiate")
	testenv.RequireProgram(t, "nix-store")
}

// sudoUser is who the tests pretend ran sudo: the CI's unprivileged user,
// or nobody where it does not exist.
type sudoUser struct {
	uid, gid int
	name     string
}

func (u sudoUser) env() []string {
	return []string{"SUDO_UID=" + strconv.Itoa(u.uid), "SUDO_GID=" + strconv.Itoa(u.gid), "SUDO_USER=" + u.name}
}

func containerUser(t testing.TB) sudoUser {
	t.Helper()
	for _, name := range []string{"csbtest", "nobody"} {
		if u, err := user.Lookup(name); err == nil {
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			return sudoUser{uid, gid, name}
		}
	}
	t.Fatal("no unprivileged user (csbtest or nobody) to run the container payload as")
	return sudoUser{}
}

// userProject is a project directory owned by the user, as theirs would be.
func userProject(t testing.TB, u sudoUser) string {
	t.Helper()
	p := project(t)
	if err := os.Chown(p, u.uid, u.gid); err != nil {
		t.Fatal(err)
	}
	return p
}

var containerBuilt sync.Once

// inContainer runs a bash script in the container of project p as the user.
func inContainer(t *testing.T, u sudoUser, o runOpts, p, script string, flags ...string) result {
	t.Helper()
	containerBuilt.Do(func() { buildJSON(t, runOpts{}, "--backend", "container") })
	o.env = append(append([]string{}, o.env...), u.env()...)
	args := append([]string{"exec", "--backend", "container"}, flags...)
	args = append(args, p, "--", "bash", "-c", script)
	return run(t, o, args...)
}

func TestContainerProjectIsTheUsers(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	os.WriteFile(filepath.Join(p, "in.txt"), []byte("from host\n"), 0o644)
	r := inContainer(t, u, runOpts{}, p, `test "$PWD" = "`+p+`" && cat in.txt && echo from container > out.txt && mkdir sub && id -u && id -g && id -un && touch ~/.config/own`)
	if r.code != 0 || !strings.Contains(r.stdout, "from host") {
		t.Fatalf("project not readable at its path: %s", r)
	}
	want := fmt.Sprintf("%d\n%d\n%s\n", u.uid, u.gid, u.name)
	if !strings.Contains(r.stdout, want) {
		t.Fatalf("the payload does not run as the invoking user (want uid, gid, name %q): %s", want, r)
	}
	for _, name := range []string{"out.txt", "sub"} {
		st, err := os.Stat(filepath.Join(p, name))
		if err != nil {
			t.Fatalf("%s written inside did not reach the host: %v", name, err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if int(sys.Uid) != u.uid || int(sys.Gid) != u.gid {
			t.Errorf("%s is owned by %d:%d on the host, not by the user %d:%d", name, sys.Uid, sys.Gid, u.uid, u.gid)
		}
	}
}

func TestContainerStoreIsReadOnly(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	b := buildJSON(t, runOpts{}, "--backend", "container")
	probe := "claude-sandbox-probe-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	r := inContainer(t, u, runOpts{}, p, fmt.Sprintf(
		`touch /nix/store/%s; a=$?; echo x >> %s/share/claude-sandbox/manifest.json; b=$?; grep -q ' /nix/store .*ro,' /proc/self/mountinfo; c=$?; [ $a -ne 0 ] && [ $b -ne 0 ] && [ $c -eq 0 ]`,
		probe, b.OutPath))
	if r.code != 0 {
		t.Fatalf("the store is writable inside the container (or not mounted read-only): %s", r)
	}
	if _, err := os.Stat("/nix/store/" + probe); err == nil {
		os.Remove("/nix/store/" + probe)
		t.Fatal("the container created a file in the host store")
	}
}

func TestContainerHostEnvironmentDoesNotLeak(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	secrets := map[string]string{
		"AWS_SECRET_ACCESS_KEY":             "aws-planted-c0ffee",
		"GITHUB_TOKEN":                      "gh-planted-4d5e6f",
		"CLAUDE_SANDBOX_RANDOM_NAME_" + "Z": "random-planted-7a8b",
	}
	env := []string{"ANTHROPIC_API_KEY=sk-allowed-container-probe"}
	for k, v := range secrets {
		env = append(env, k+"="+v)
	}
	r := inContainer(t, u, runOpts{env: env}, p,
		`env; tr '\0' '\n' < /proc/self/environ; tr '\0' '\n' < /proc/1/environ 2>/dev/null; tr '\0' ' ' < /proc/1/cmdline; true`)
	if r.code != 0 {
		t.Fatalf("probe failed: %s", r)
	}
	for k, v := range secrets {
		if strings.Contains(r.stdout, v) || strings.Contains(r.stdout, k) {
			t.Errorf("%s is visible inside the container", k)
		}
	}
	// ANTHROPIC_API_KEY is a secret: inside, a placeholder of its shape.
	if !strings.Contains(r.stdout, "ANTHROPIC_API_KEY=sk-") || strings.Contains(r.stdout, "sk-allowed-container-probe") || !strings.Contains(r.stdout, "CLAUDE_SANDBOX_BACKEND=container") {
		t.Errorf("the allowlisted variables did not reach the container, or the API key did as itself: %s", r)
	}
	// Values cross through nspawn's environment, never its command line
	// (world-readable in /proc/PID/cmdline on the host).
	dry := run(t, runOpts{env: append(env, u.env()...)}, "exec", "--backend", "container", "--dry-run", p, "--", "true")
	if dry.code != 0 {
		t.Fatalf("--dry-run: %s", dry)
	}
	var inv struct{ Args []string }
	if err := json.Unmarshal([]byte(dry.stdout), &inv); err != nil {
		t.Fatalf("--dry-run printed %q: %v", dry.stdout, err)
	}
	if joined := strings.Join(inv.Args, " "); strings.Contains(joined, "sk-allowed-container-probe") || !strings.Contains(joined, "--setenv=CLAUDE_SANDBOX_BACKEND") {
		t.Errorf("the API key's value is on nspawn's command line, or the variables' names are missing: %v", inv.Args)
	}

	r = inContainer(t, u, runOpts{env: env}, p, `echo "got=$GITHUB_TOKEN"`, "--env", "GITHUB_TOKEN")
	if !strings.Contains(r.stdout, "got=gh-planted-4d5e6f") {
		t.Errorf("--env GITHUB_TOKEN did not opt the variable in: %s", r)
	}
	r = inContainer(t, u, runOpts{env: append(env, "LD_PRELOAD=/nope.so")}, p, `true`, "--env", "LD_PRELOAD")
	if r.code != 64 {
		t.Errorf("--env LD_PRELOAD (read by systemd-nspawn itself, as root) was not refused: %s", r)
	}
}

func TestContainerHostProcessesAreInvisible(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	r := inContainer(t, u, runOpts{}, p, fmt.Sprintf(`kill -0 %d 2>/dev/null && echo SIGNALLED; ls /proc | grep -c '^[0-9]'`, os.Getpid()))
	if strings.Contains(r.stdout, "SIGNALLED") {
		t.Fatalf("the container can signal a host process: %s", r)
	}
	var n int
	fmt.Sscan(strings.TrimSpace(r.stdout), &n)
	if n == 0 || n > 12 {
		t.Fatalf("the container sees %d processes; its own pid namespace has its init, the payload and a few threads: %s", n, r)
	}
}

func TestContainerExitCodePassesThrough(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	for _, code := range []int{0, 1, 42, 113} {
		if r := inContainer(t, u, runOpts{}, p, fmt.Sprintf("exit %d", code)); r.code != code {
			t.Errorf("exit %d inside, %d outside: %s", code, r.code, r)
		}
	}
	if r := inContainer(t, u, runOpts{}, p, `kill -TERM $$`); r.code != 128+int(syscall.SIGTERM) {
		t.Errorf("a payload killed by SIGTERM: want %d, got %s", 128+int(syscall.SIGTERM), r)
	}
	if r := inContainer(t, u, runOpts{}, p, `exec no-such-program-here`); r.code != 127 {
		t.Errorf("a missing program: want 127, got %s", r)
	}
}

// The network switch, both ways, against a real listener on the host's
// loopback: the container shares the host's network by default.
func TestContainerNetworkSwitch(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	checkNetworkSwitch(t, "container", func(script string, flags ...string) result { return inContainer(t, u, runOpts{}, p, script, flags...) })
}

// containerNspawnLeftovers lists what an nspawn run could leave on the host: the
// per-machine directories under /run/systemd/nspawn and the temporary
// mount points of --volatile.
func containerNspawnLeftovers(t *testing.T) map[string]bool {
	out := map[string]bool{}
	for _, pattern := range []string{"/run/systemd/nspawn/propagate/*", "/run/systemd/nspawn/locks/*", "/tmp/nspawn-volatile-*", "/tmp/nspawn-root-*"} {
		m, _ := filepath.Glob(pattern)
		for _, p := range m {
			out[p] = true
		}
	}
	return out
}

// containerProcessWith reports whether a host process runs `sleep ARG`
// (the payload, not the nspawn or init command lines that name it).
func containerProcessWith(arg string) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		stat, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && strings.HasPrefix(strings.TrimSpace(string(stat[i+1:])), "Z") {
			continue
		}
		if string(data) == "sleep\x00"+arg+"\x00" {
			return true
		}
	}
	return false
}

func waitForContainer(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The root is a tmpfs that lives as long as the container: what one run
// writes outside the project is gone in the next, and nothing of it stays
// on the host — after a normal exit and after the launching process is
// SIGKILLed.
func TestContainerRootIsEphemeral(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	before := containerNspawnLeftovers(t)

	r := inContainer(t, u, runOpts{}, p, `echo kept > /var/tmp/marker && echo kept > ~/marker && touch /etc/x 2>/dev/null; echo done`)
	if r.code != 0 || !strings.Contains(r.stdout, "done") {
		t.Fatalf("first run: %s", r)
	}
	r = inContainer(t, u, runOpts{}, p, `ls /var/tmp/marker ~/marker /etc/x 2>/dev/null; true`)
	if strings.Contains(r.stdout, "marker") || strings.Contains(r.stdout, "/etc/x") {
		t.Fatalf("files from the previous container's root survived: %s", r)
	}

	// SIGKILL the launch (by then it is systemd-nspawn itself) while the
	// payload runs.
	sleeper := fmt.Sprintf("%d.%d", 4000+os.Getpid()%1000, time.Now().UnixNano()%1000)
	cmd := exec.Command(binary, "exec", "--backend", "container", p, "--", "sleep", sleeper)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"XDG_CACHE_HOME=" + sharedDirs().cache, "XDG_STATE_HOME=" + sharedDirs().state,
		"CLAUDE_SANDBOX_NIXPKGS=" + fixture, "TERM=dumb"}, u.env()...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForContainer(t, "the payload runs", func() bool { return containerProcessWith(sleeper) })
	ps := run(t, runOpts{}, "ps", "--json")
	if !strings.Contains(ps.stdout, `"backend": "container"`) || !strings.Contains(ps.stdout, p) {
		t.Errorf("ps does not list the running container: %s", ps)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	waitForContainer(t, "the killed launch's container is gone", func() bool { return !containerProcessWith(sleeper) })
	// The payload can die with its launch a moment before the supervisor,
	// told by the closed session, has ended the container and forgotten it.
	waitNotListed(t, p, 15*time.Second)
	for left := range containerNspawnLeftovers(t) {
		if !before[left] {
			t.Errorf("left on the host: %s", left)
		}
	}
	// And the next launch starts.
	if r := inContainer(t, u, runOpts{}, p, `echo again`); r.code != 0 || !strings.Contains(r.stdout, "again") {
		t.Fatalf("a launch after the SIGKILL: %s", r)
	}
}

// enter joins the running container as its user, with its environment, in
// the project; stop ends it.
func TestContainerEnterAndStop(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	inContainer(t, u, runOpts{}, p, "true") // the closure is built
	sleeper := fmt.Sprintf("%d.%d", 5000+os.Getpid()%1000, time.Now().UnixNano()%1000)
	cmd := exec.Command(binary, "exec", "--backend", "container", p, "--", "sleep", sleeper)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"XDG_CACHE_HOME=" + sharedDirs().cache, "XDG_STATE_HOME=" + sharedDirs().state,
		"CLAUDE_SANDBOX_NIXPKGS=" + fixture, "TERM=dumb", "ANTHROPIC_API_KEY=sk-enter-probe"}, u.env()...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitForContainer(t, "the payload runs", func() bool { return containerProcessWith(sleeper) })

	r := run(t, runOpts{}, "enter", p, "--", "bash", "-c", `echo "backend=$CLAUDE_SANDBOX_BACKEND key=$ANTHROPIC_API_KEY pwd=$(pwd) uid=$(id -u)"; pgrep -x sleep >/dev/null && echo SEES-PAYLOAD; exit 5`)
	// The key is the sandbox's placeholder, never the host's value.
	want := fmt.Sprintf("pwd=%s uid=%d", p, u.uid)
	if r.code != 5 || !strings.Contains(r.stdout, want) || !strings.Contains(r.stdout, "backend=container key=sk-") ||
		strings.Contains(r.stdout, "sk-enter-probe") || !strings.Contains(r.stdout, "SEES-PAYLOAD") {
		t.Fatalf("enter: want %q inside the running container and its exit status 5: %s", want, r)
	}

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if r := run(t, runOpts{}, "stop", p); r.code != 0 {
		t.Fatalf("stop: %s", r)
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the container did not end after stop")
	}
	if containerProcessWith(sleeper) {
		t.Fatal("the payload survived stop")
	}
}

// build --backend container prebuilds the NixOS system; the launch that
// follows finds it in the cache.
func TestContainerBuildPrebuilds(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	d := freshDirs(t)
	b := buildJSON(t, runOpts{dirs: d}, "--backend", "container", "--with", "python3")
	data, err := os.ReadFile(filepath.Join(b.OutPath, "share/claude-sandbox/manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Backend   string
		Container struct{ Toplevel string }
	}
	json.Unmarshal(data, &m)
	if m.Backend != "container" {
		t.Fatalf("build --backend container made a %q closure", m.Backend)
	}
	for _, rel := range []string{"init", "sw/bin/bash", "sw/bin/python3", "etc/os-release"} {
		if _, err := os.Stat(filepath.Join(m.Container.Toplevel, rel)); err != nil {
			t.Errorf("the NixOS toplevel lacks %s: %v", rel, err)
		}
	}
	again := buildJSON(t, runOpts{dirs: d}, "container", "--with", "python3")
	if !again.Cached || again.OutPath != b.OutPath {
		t.Errorf("build container after build --backend container: not the cached closure: %+v vs %+v", again, b)
	}
	o := runOpts{dirs: d, env: u.env()}
	r := run(t, o, "exec", "--backend", "container", "--with", "python3", p, "--", "python3", "-c", "import json; print(json.dumps({'ok': 1}))")
	if r.code != 0 || !strings.Contains(r.stdout, `{"ok": 1}`) {
		t.Fatalf("python3 from --with in the container: %s", r)
	}
}

// A --module file is a NixOS module of the container's system.
func TestContainerModule(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	mod := filepath.Join(t.TempDir(), "extra.nix")
	os.WriteFile(mod, []byte(`{ lib, ... }: { environment.etc."claude-sandbox-probe".text = "from a module"; networking.hostName = lib.mkForce "probe-host"; }`), 0o644)
	r := run(t, runOpts{env: u.env()}, "exec", "--backend", "container", "--module", mod, p, "--", "bash", "-c", `cat /etc/claude-sandbox-probe; echo; uname -n; cat /etc/hostname`)
	if r.code != 0 || !strings.Contains(r.stdout, "from a module") || strings.Count(r.stdout, "probe-host") != 2 {
		t.Fatalf("the module's /etc file and host name are not in the container: %s", r)
	}
	bad := filepath.Join(t.TempDir(), "bad.nix")
	os.WriteFile(bad, []byte(`{ services.no-such-service.enable = true; }`), 0o644)
	r = run(t, runOpts{env: u.env()}, "build", "--backend", "container", "--module", bad)
	if r.code != 70 || !strings.Contains(r.stderr, "services.no-such-service.enable") {
		t.Errorf("a module setting an option that does not exist: want exit 70 naming it: %s", r)
	}
}

// The original's separate command name still works.
func TestContainerEntryName(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	inContainer(t, u, runOpts{}, p, "true")
	alias := filepath.Join(t.TempDir(), "claude-sandbox-container")
	if err := os.Symlink(binary, alias); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(alias, "exec", p, "--", "bash", "-c", `echo "backend=$CLAUDE_SANDBOX_BACKEND"`)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"XDG_CACHE_HOME=" + sharedDirs().cache, "XDG_STATE_HOME=" + sharedDirs().state,
		"CLAUDE_SANDBOX_NIXPKGS=" + fixture}, u.env()...)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "backend=container") {
		t.Fatalf("claude-sandbox-container exec: %v\n%s", err, out)
	}
}

// Without root: one line saying so, the hint to use sudo, exit 77.
func TestContainerNeedsRoot(t *testing.T) {
	p := project(t)
	cmd := exec.Command(binary, "exec", "--backend", "container", p, "--", "true")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "CLAUDE_SANDBOX_NIXPKGS=" + fixture,
		"XDG_CACHE_HOME=" + filepath.Join(t.TempDir(), "c"), "XDG_STATE_HOME=" + filepath.Join(t.TempDir(), "s")}
	if os.Geteuid() == 0 {
		u := containerUser(t)
		home := filepath.Join(workDir, "home-"+strconv.Itoa(os.Getpid()))
		os.MkdirAll(home, 0o755)
		os.Chown(home, u.uid, u.gid)
		defer os.RemoveAll(home)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "CLAUDE_SANDBOX_NIXPKGS=" + fixture}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid)}}
	}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	if code != 77 || !strings.Contains(string(out), "needs root") || !strings.Contains(string(out), "sudo") {
		t.Fatalf("without root: want exit 77 and a hint to use sudo, got %d:\n%s", code, out)
	}
}

// A --module setting nixpkgs.config meets NixOS's assertion for a package
// set made outside the system (claude-sandbox's): the error says so and
// how to allow an unfree package instead, not Nix's assertion page.
func TestModuleSettingNixpkgsConfigIsExplained(t *testing.T) {
	requireSandboxHost(t)
	mod := filepath.Join(t.TempDir(), "unfree.nix")
	os.WriteFile(mod, []byte(`{ nixpkgs.config.allowUnfree = true; }`), 0o644)
	r := run(t, runOpts{dirs: freshDirs(t)}, "build", "--backend", "container", "--module", mod)
	if r.code != 70 || !strings.Contains(r.stderr, "sets nixpkgs.config") || !strings.Contains(r.stderr, "NIXPKGS_ALLOW_UNFREE=1") ||
		strings.Contains(r.stderr, "Failed assertions") {
		t.Errorf("a module setting nixpkgs.config: %s", r)
	}
}

// Claude Code is an unpatched binary: it runs through the loader at the
// place the closure's platform names (the manifest's nixLd.path), which the
// container's root tree provides.
func TestContainerRunsClaudeCode(t *testing.T) {
	requireContainerHost(t)
	u := containerUser(t)
	p := userProject(t, u)
	r := inContainer(t, u, runOpts{}, p, `claude --version`)
	if r.code != 0 || !strings.Contains(r.stdout, "(Claude Code)") {
		t.Fatalf("claude --version in the container: %s", r)
	}
}
