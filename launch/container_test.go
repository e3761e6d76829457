package launch

import (
	"context"
	"debug/elf"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

func containerManifest() *manifest.Manifest {
	m := handManifest()
	m.Backend = "container"
	m.Bwrap = ""
	s := "/nix/store/0000000000000000000000000000000a-"
	m.Container = &manifest.Container{
		Toplevel: s + "nixos-system", Root: s + "container-root", HostName: "claude-sandbox", Nsenter: s + "util-linux/bin/nsenter",
	}
	return m
}

func containerRuntime(t *testing.T, vars map[string]string) *Runtime {
	home := t.TempDir()
	return &Runtime{
		Project: "/srv/my:project", Command: []string{"python3", "-c", "print(1)"}, Network: true,
		Home: home, User: "alice", LookupEnv: env(vars), EUID: func() int { return 1000 },
	}
}

func fakeContainerHost(systemd, terminal bool) containerHost {
	return containerHost{
		Nspawn: "/usr/bin/systemd-nspawn", Self: "/opt/claude-sandbox", Systemd: systemd, Terminal: terminal,
		Exists: func(p string) bool { return p == "/etc/resolv.conf" },
	}
}

func TestContainerInvocation(t *testing.T) {
	m := containerManifest()
	rt := containerRuntime(t, map[string]string{"ANTHROPIC_API_KEY": "sk-secret", "TERM": "xterm"})
	inv, machine, err := containerInvocation(m, rt, fakeContainerHost(false, false), "0123456789ab")
	if err != nil {
		t.Fatal(err)
	}
	if inv.Path != "/usr/bin/systemd-nspawn" || machine != "claude-my-project-0123456789ab" {
		t.Fatalf("path %q machine %q", inv.Path, machine)
	}
	for _, want := range []string{
		"--directory=" + m.Container.Root, "--volatile=yes", "--machine=" + machine, "--hostname=claude-sandbox",
		"--register=no", "--keep-unit", "--bind-ro=/nix/store", "--bind-ro=/etc/resolv.conf",
		`--bind=/srv/my\:project:/srv/my\:project`, "--bind-ro=/opt/claude-sandbox:" + ContainerInitPath,
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
		if a == "--bind-ro=/etc/hosts" || a == "--private-network" {
			t.Errorf("unexpected %q", a)
		}
	}
	if !slices.Contains(inv.Env, "ANTHROPIC_API_KEY=sk-secret") || !slices.Contains(inv.Env, "SYSTEMD_NSPAWN_LOCK=0") {
		t.Errorf("environment: %q", inv.Env)
	}
	// Everything after the first -- is the init's command line.
	dash := slices.Index(inv.Args, "--")
	if dash < 0 || inv.Args[dash+1] != ContainerInitPath {
		t.Fatalf("no init after --: %q", inv.Args)
	}
	spec, err := parseInitSpec(inv.Args[dash+2:])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(spec.Command, rt.Command) || spec.Cwd != rt.Project || spec.Toplevel != m.Container.Toplevel || spec.TTY {
		t.Errorf("init spec %+v", spec)
	}

	rt.Network = false
	inv, _, _ = containerInvocation(m, rt, fakeContainerHost(true, true), "0123456789ab")
	for _, want := range []string{"--private-network", "--console=interactive"} {
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
		_, _, err := containerInvocation(containerManifest(), rt, fakeContainerHost(false, false), "0123456789ab")
		var e *EnvNameError
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

func TestNspawnFromBwrap(t *testing.T) {
	exists := func(p string) bool { return p != "/missing" }
	got, dev, err := nspawnFromBwrap([]string{
		"--ro-bind-try", "/run/user/1/bus", "/run/user/2/bus", "--ro-bind-try", "/missing", "/x",
		"--tmpfs", "/tmp/.X11-unix", "--dev-bind-try", "/dev/dri", "/dev/dri", "--bind", "/a:b", "/c",
	}, exists)
	want := []string{"--bind-ro=/run/user/1/bus:/run/user/2/bus", "--tmpfs=/tmp/.X11-unix", "--bind=/dev/dri:/dev/dri", `--bind=/a\:b:/c`}
	if err != nil || !dev || !slices.Equal(got, want) {
		t.Errorf("got %q %v %v, want %q", got, dev, err, want)
	}
	if _, _, err := nspawnFromBwrap([]string{"--symlink", "a", "b"}, exists); err == nil {
		t.Error("an argument nspawn has no equivalent for was accepted")
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
	rt := &Runtime{User: "root", Home: "/root", EUID: func() int { return 0 },
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
		Cwd: "/srv/p", Toplevel: "/nix/store/x-system", TTY: true, Command: []string{"bash", "--", "-c"}}
	got, err := parseInitSpec(s.args()[1:])
	if err != nil {
		t.Fatal(err)
	}
	if got.UID != s.UID || got.GID != s.GID || !slices.Equal(got.Groups, s.Groups) || got.User != s.User ||
		got.Home != s.Home || got.Cwd != s.Cwd || got.Toplevel != s.Toplevel || !got.TTY || !slices.Equal(got.Command, s.Command) {
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
	var e *NotRootError
	if err := startContainer(context.Background(), containerManifest(), rt); !errors.As(err, &e) || !strings.Contains(e.Hint(), "sudo") {
		t.Errorf("got %v", err)
	}
}

func TestSudoArgvKeepsNamesOnly(t *testing.T) {
	host := map[string]string{"ANTHROPIC_API_KEY": "sk-value", "AWS_SECRET_ACCESS_KEY": "aws", "DISPLAY": ":0",
		"MY_VAR": "mine", "LD_PRELOAD": "/x.so", "CLAUDE_SANDBOX_NIXPKGS": "/srv/nixpkgs"}
	argv := sudoArgv("/opt/claude-sandbox", []string{"--backend=container", "./p"}, []string{"MY_VAR", "LD_PRELOAD"}, env(host))
	want := []string{"sudo", "--preserve-env=ANTHROPIC_API_KEY,CLAUDE_SANDBOX_NIXPKGS,DISPLAY,MY_VAR", "--", "/opt/claude-sandbox", "--backend=container", "./p"}
	if !slices.Equal(argv, want) {
		t.Errorf("got  %q\nwant %q", argv, want)
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
