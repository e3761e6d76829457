package container

import (
	"debug/elf"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/internal/launchtest"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

var env = launchtest.Env

func containerManifest() *manifest.Manifest {
	m := launchtest.Manifest()
	m.Backend = "container"
	m.Bwrap = ""
	s := "/nix/store/0000000000000000000000000000000a-"
	m.Container = &manifest.Container{
		Toplevel: s + "nixos-system", Root: s + "container-root", HostName: "claude-sandbox", Nsenter: s + "util-linux/bin/nsenter",
	}
	return m
}

func containerRuntime(t *testing.T, vars map[string]string) *launch.Runtime {
	home := t.TempDir()
	return &launch.Runtime{
		Project: "/srv/my:project", Command: []string{"python3", "-c", "print(1)"}, Network: true,
		Home: home, User: "alice", LookupEnv: env(vars), EUID: func() int { return 1000 },
		StateDir: filepath.Join(t.TempDir(), "state"),
	}
}

func fakeContainerHost(systemd, terminal bool) host {
	return host{
		Nspawn: "/usr/bin/systemd-nspawn", Self: "/opt/claude-sandbox", Systemd: systemd, Terminal: terminal,
		Exists: func(p string) bool { return p == "/etc/resolv.conf" },
	}
}

// containerPlan is what a launch by rt decides on host h, with the user
// invokingUser finds.
func containerPlan(t *testing.T, m *manifest.Manifest, rt *launch.Runtime, h host) (*launch.Invocation, string, error) {
	t.Helper()
	u, err := invokingUser(rt)
	if err != nil {
		t.Fatal(err)
	}
	p := launch.NewPlan(Backend{}, m, rt, "0123456789ab")
	if err := plan(p, m, rt, h, u); err != nil {
		return nil, "", err
	}
	return p.Invocation, p.Detail.(*detail).Machine, nil
}

func TestContainerInvocation(t *testing.T) {
	m := containerManifest()
	rt := containerRuntime(t, map[string]string{"ANTHROPIC_API_KEY": "sk-secret", "TERM": "xterm"})
	inv, machine, err := containerPlan(t, m, rt, fakeContainerHost(false, false))
	if err != nil {
		t.Fatal(err)
	}
	if inv.Path != "/usr/bin/systemd-nspawn" || machine != "claude-my-project-0123456789ab" {
		t.Fatalf("path %q machine %q", inv.Path, machine)
	}
	for _, want := range []string{
		"--directory=" + m.Container.Root, "--volatile=yes", "--machine=" + machine, "--hostname=claude-sandbox",
		"--register=no", "--keep-unit", "--bind-ro=/nix/store:/nix/store", "--bind-ro=/etc/resolv.conf:/etc/resolv.conf",
		`--bind=/srv/my\:project:/srv/my\:project`, "--bind-ro=/opt/claude-sandbox:" + InitPath,
		"--console=pipe", "--setenv=ANTHROPIC_API_KEY", "--setenv=PATH", "--kill-signal=SIGTERM",
	} {
		if !slices.Contains(inv.Args, want) {
			t.Errorf("missing %q in %q", want, inv.Args)
		}
	}
	for _, a := range inv.Args {
		if strings.Contains(a, "sk-secret") {
			t.Errorf("a secret value on the command line: %q", a)
		}
		if strings.HasPrefix(a, "--bind-ro=/etc/hosts") {
			t.Errorf("unexpected %q", a)
		}
	}
	// A network namespace of its own in every mode: its proxy is its way out.
	if !slices.Contains(inv.Args, "--private-network") {
		t.Error("the container shares the host's network namespace")
	}
	if !slices.Contains(inv.Env, "ANTHROPIC_API_KEY=sk-secret") || !slices.Contains(inv.Env, "SYSTEMD_NSPAWN_LOCK=0") {
		t.Errorf("environment: %q", inv.Env)
	}
	// Everything after the first -- is the init's command line.
	dash := slices.Index(inv.Args, "--")
	if dash < 0 || inv.Args[dash+1] != InitPath {
		t.Fatalf("no init after --: %q", inv.Args)
	}
	spec, err := parseInitSpec(inv.Args[dash+2:])
	if err != nil {
		t.Fatal(err)
	}
	// The init keeps the container; the command joins it as a session.
	if !spec.Keep || len(spec.Command) != 0 || spec.Cwd != rt.Project || spec.Toplevel != m.Container.Toplevel || spec.TTY {
		t.Errorf("init spec %+v", spec)
	}
	if !slices.Equal(inv.Session, rt.Command) {
		t.Errorf("the session's command is %q, want %q", inv.Session, rt.Command)
	}

	rt.Network = false
	inv, _, _ = containerPlan(t, m, rt, fakeContainerHost(true, true))
	// Even on a terminal: the keeper's standard input is its lifetime pipe.
	for _, want := range []string{"--private-network", "--console=pipe"} {
		if !slices.Contains(inv.Args, want) {
			t.Errorf("missing %q", want)
		}
	}
	if slices.Contains(inv.Args, "--register=no") || slices.Contains(inv.Args, "--keep-unit") {
		t.Errorf("where systemd runs, nspawn registers the machine: %q", inv.Args)
	}
}

func TestContainerRefusesEnvThatSteersNspawn(t *testing.T) {
	for _, name := range []string{"LD_PRELOAD", "SYSTEMD_NSPAWN_API_VFS_WRITABLE", "NOTIFY_SOCKET"} {
		rt := containerRuntime(t, map[string]string{name: "x"})
		rt.ExtraEnv = []string{name}
		_, _, err := containerPlan(t, containerManifest(), rt, fakeContainerHost(false, false))
		var e *launch.EnvNameError
		if !errors.As(err, &e) {
			t.Errorf("--env %s: %v", name, err)
		}
	}
}

func TestNspawnPathEscapes(t *testing.T) {
	if got := nspawnPath(`/a:b\c`); got != `/a\:b\\c` {
		t.Errorf("got %q", got)
	}
}

// TestNspawnMounts: the typed plan in nspawn's terms. An optional source
// that is missing is left out (nspawn has no -try), unless the start will
// create it; a device bind is a bind plus, where systemd runs, the drm
// device class; paths are escaped; what nspawn cannot express is refused.
func TestNspawnMounts(t *testing.T) {
	exists := func(p string) bool { return p != "/missing" && p != "/made-by-start" }
	m := containerManifest()
	u := containerUser{UID: 1000, GID: 100, Name: "u", Home: "/home/u"}
	p := &launch.Plan{Cwd: "/p", Command: []string{"true"}, Network: true, Mounts: []launch.Mount{
		{Kind: launch.ROBind, Source: "/run/user/1/bus", Dest: "/run/user/2/bus", Optional: true},
		{Kind: launch.ROBind, Source: "/missing", Dest: "/x", Optional: true},
		{Kind: launch.Bind, Source: "/made-by-start", Dest: "/y", Optional: true},
		{Kind: launch.Tmpfs, Dest: "/tmp/.X11-unix"},
		{Kind: launch.DevBind, Source: "/dev/dri", Dest: "/dev/dri", Optional: true},
		{Kind: launch.Bind, Source: "/a:b", Dest: "/c"},
		{Kind: launch.Dir, Dest: "/run/user/1000", Mode: 0o700},
		{Kind: launch.File, Source: "/home/u/.claude.json", Dest: "/home/u/.claude.json", Mode: 0o600, Optional: true},
	}, Prepare: []launch.HostDir{{Path: "/made-by-start"}}}
	h := host{Nspawn: "/usr/bin/systemd-nspawn", Systemd: true, Exists: exists}
	inv, err := render(p, m, h, u, "machine")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"--bind-ro=/run/user/1/bus:/run/user/2/bus", "--bind=/made-by-start:/y", "--tmpfs=/tmp/.X11-unix", "--bind=/dev/dri:/dev/dri", `--bind=/a\:b:/c`,
		"--tmpfs=/run/user/1000:mode=0700,uid=1000,gid=100", "--bind-ro=/home/u/.claude.json:" + copyStaging + "0", "--property=DeviceAllow=char-drm rw"}
	var got []string
	for _, a := range inv.Args {
		if strings.HasPrefix(a, "--bind") || strings.HasPrefix(a, "--tmpfs") || strings.HasPrefix(a, "--property") {
			got = append(got, a)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	spec, err := parseInitSpec(inv.Args[slices.Index(inv.Args, "--")+2:])
	if err != nil || len(spec.Copies) != 1 || spec.Copies[0] != (fileCopy{Dest: "/home/u/.claude.json", Mode: 0o600}) {
		t.Errorf("the init is not told to copy ~/.claude.json into place: %+v %v", spec.Copies, err)
	}
	h.Systemd = false
	if inv, _ := render(p, m, h, u, "machine"); slices.Contains(inv.Args, "--property=DeviceAllow=char-drm rw") {
		t.Error("a device property for an nspawn that has no systemd scope")
	}
	p.Mounts = []launch.Mount{{Kind: launch.MountKind(99), Source: "a", Dest: "b"}}
	if _, err := render(p, m, h, u, "machine"); err == nil {
		t.Error("a mount nspawn has no equivalent for was accepted")
	}
}

// Symbolic links (~/.claude's, to the host's read-only view) are made by
// the init, any character in either path; a read-only placeholder is a
// tmpfs of root's whose mode allows no writing.
func TestNspawnLinksAndPlaceholders(t *testing.T) {
	m := containerManifest()
	u := containerUser{UID: 1000, GID: 100, Name: "u", Home: "/home/u"}
	target, dest := "/run/claude-sandbox/host-claude/we:ird\nname", "/home/u/.claude/we:ird\nname"
	p := &launch.Plan{Cwd: "/p", Command: []string{"true"}, Mounts: []launch.Mount{
		{Kind: launch.Symlink, Source: target, Dest: dest},
		{Kind: launch.Tmpfs, Dest: "/p/.envrc", Mode: 0o555},
	}}
	inv, err := render(p, m, host{Nspawn: "/usr/bin/systemd-nspawn", Exists: func(string) bool { return false }}, u, "machine")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(inv.Args, "--tmpfs=/p/.envrc:mode=0555") {
		t.Errorf("placeholder: %q", inv.Args)
	}
	spec, err := parseInitSpec(inv.Args[slices.Index(inv.Args, "--")+2:])
	if err != nil || len(spec.Links) != 1 || spec.Links[0] != (symlink{Target: target, Dest: dest}) {
		t.Errorf("the init is not told to make the link: %+v %v", spec.Links, err)
	}
	for _, bad := range []string{"--symlink=x", "--symlink=5:/a/b", "--symlink=2:/ab", "--symlink=3:/a/relative"} {
		if _, err := parseInitSpec([]string{"--uid=1", "--gid=1", bad, "--", "true"}); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestMachineName(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	for _, p := range []string{"/srv/My Project!", "/x/" + strings.Repeat("long", 30), "/tmp/...", "/p/ünï"} {
		n := MachineName(p, "0123456789ab")
		if !valid.MatchString(n) || len(n) > 64 || !strings.HasSuffix(n, "0123456789ab") {
			t.Errorf("%q: machine name %q", p, n)
		}
	}
}

func TestInvokingUserFromSudo(t *testing.T) {
	rt := &launch.Runtime{User: "root", Home: "/root", EUID: func() int { return 0 },
		LookupEnv: env(map[string]string{"SUDO_UID": "4242424", "SUDO_GID": "4343434", "SUDO_USER": "alice"})}
	u, err := invokingUser(rt)
	if err != nil {
		t.Fatal(err)
	}
	if u.UID != 4242424 || u.GID != 4343434 || u.Name != "alice" || u.Home != "/home/alice" || u.Groups[0].GID != 4343434 {
		t.Errorf("%+v", u)
	}
	rt.LookupEnv = env(map[string]string{"SUDO_UID": "nope"})
	if _, err := invokingUser(rt); err == nil {
		t.Error("a malformed SUDO_UID was accepted")
	}
	// A SUDO_USER that cannot be a passwd entry is not written into one.
	rt.LookupEnv = env(map[string]string{"SUDO_UID": "4242424", "SUDO_USER": "x:0:0::/:/bin/sh\nroot"})
	if u, _ := invokingUser(rt); u.Name != "user" {
		t.Errorf("name %q", u.Name)
	}
}

func TestInitSpecRoundTrip(t *testing.T) {
	s := initSpec{UID: 1000, GID: 100, Groups: []containerGroup{{100, "users"}, {27, "sudo"}}, User: "alice", Home: "/home/alice",
		Cwd: "/srv/p", Toplevel: "/nix/store/x-system", TTY: true, Command: []string{"bash", "--", "-c"},
		Copies: []fileCopy{{Dest: "/home/alice/.claude.json", Mode: 0o600}}}
	got, err := parseInitSpec(s.args()[1:])
	if err != nil {
		t.Fatal(err)
	}
	if got.UID != s.UID || got.GID != s.GID || !slices.Equal(got.Groups, s.Groups) || got.User != s.User ||
		got.Home != s.Home || got.Cwd != s.Cwd || got.Toplevel != s.Toplevel || !got.TTY || !slices.Equal(got.Command, s.Command) ||
		!slices.Equal(got.Copies, s.Copies) {
		t.Errorf("%+v", got)
	}
	if _, err := parseInitSpec([]string{"--uid=1", "--gid=1", "--groups=1:a:b", "--", "x"}); err == nil {
		t.Error("a group name with a colon was accepted")
	}
}

func TestContainerPayloadEnv(t *testing.T) {
	got := containerPayloadEnv([]string{"PATH=/x", "NOTIFY_SOCKET=/run/host/notify", "container_host_id=debian", "container=systemd-nspawn", "LISTEN_FDS=1"})
	if !slices.Equal(got, []string{"PATH=/x", "container=systemd-nspawn"}) {
		t.Errorf("%q", got)
	}
}

func TestContainerNeedsRoot(t *testing.T) {
	rt := containerRuntime(t, nil)
	var e *launch.NotRootError
	if err := (Backend{}).Check(rt); !errors.As(err, &e) || !strings.Contains(e.Hint(), "sudo") {
		t.Errorf("got %v", err)
	}
	rt.EUID = func() int { return 0 }
	if err := (Backend{}).Check(rt); err != nil {
		t.Errorf("as root: %v", err)
	}
}

func TestELFInterpreterAgreesWithDebugELF(t *testing.T) {
	self, _ := os.Executable()
	candidates := []string{self, "/bin/sh", "/bin/busybox", "/usr/bin/bwrap"}
	checked := 0
	for _, path := range candidates {
		want, ok := debugELFInterpreter(path)
		if !ok {
			continue
		}
		got, err := elfInterpreter(path)
		if err != nil || got != want {
			t.Errorf("%s: interpreter %q, %v; debug/elf says %q", path, got, err, want)
		}
		checked++
	}
	if checked < 2 {
		t.Fatalf("only %d of %v readable", checked, candidates)
	}
	notELF := filepath.Join(t.TempDir(), "script")
	os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755)
	if _, err := elfInterpreter(notELF); err == nil {
		t.Error("a script was read as an ELF executable")
	}
}

func debugELFInterpreter(path string) (string, bool) {
	f, err := elf.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			data, _ := io.ReadAll(p.Open())
			return strings.TrimRight(string(data), "\x00"), true
		}
	}
	return "", true
}

// TestPlanWritesNothing: deciding a container start (what --dry-run
// prints) creates neither ~/.claude nor the state directory nor
// .git/hooks; it lists them for the start to create, given to the user.
func TestPlanWritesNothing(t *testing.T) {
	stateHome := t.TempDir()
	t.Setenv("XDG_STATE_HOME", stateHome)
	m := containerManifest()
	rt := containerRuntime(t, nil)
	rt.Project, rt.Protect = t.TempDir(), true
	os.MkdirAll(filepath.Join(rt.Project, ".git"), 0o755)
	state, _ := launch.ProjectStatePath(rt.Project)
	rt.StateDir = state
	u := containerUser{UID: 4242, GID: 4343, Name: "alice", Home: rt.Home}
	p := launch.NewPlan(Backend{}, m, rt, "0123456789ab")
	if err := plan(p, m, rt, fakeContainerHost(false, false), u); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Join(rt.Home, ".claude"), state, filepath.Join(rt.Project, ".git", "hooks")} {
		if _, err := os.Lstat(path); err == nil {
			t.Errorf("planning created %s", path)
		}
	}
	made := map[string]bool{}
	for _, d := range p.Prepare {
		if d.Owner == nil || *d.Owner != (launch.Owner{UID: 4242, GID: 4343}) {
			t.Errorf("%s would not be the user's: %+v", d.Path, d.Owner)
		}
		made[d.Path] = true
	}
	for _, path := range []string{filepath.Join(rt.Home, ".claude"), filepath.Join(state, "tmp"), filepath.Join(rt.Project, ".git", "hooks")} {
		if !made[path] {
			t.Errorf("the start would not create %s: %+v", path, p.Prepare)
		}
	}
	claude := filepath.Join(rt.Home, ".claude")
	for _, want := range []string{
		"--bind-ro=" + claude + ":" + launch.ClaudeHostView,
		"--bind=" + filepath.Join(claude, "projects") + ":" + filepath.Join(claude, "projects"),
		"--bind=" + filepath.Join(claude, "history.jsonl") + ":" + filepath.Join(claude, "history.jsonl"),
		"--tmpfs=" + claude + ":mode=0700,uid=4242,gid=4343",
		"--tmpfs=" + filepath.Join(rt.Project, ".vscode") + ":mode=0555",
		"--bind=" + filepath.Join(state, "tmp") + ":/tmp",
	} {
		if !slices.Contains(p.Invocation.Args, want) {
			t.Errorf("missing %q in %q", want, p.Invocation.Args)
		}
	}
}
