package vm

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/internal/launchtest"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

var (
	env   = launchtest.Env
	index = launchtest.Index
)

func vmManifest(network bool) *manifest.Manifest {
	s := launchtest.Store
	m := launchtest.Manifest()
	m.Backend = "vm"
	m.VM = &manifest.VM{
		Toplevel: s + "nixos-system", Kernel: s + "linux/bzImage", Initrd: s + "initrd/initrd",
		KernelParams: []string{"console=ttyS0", "init=" + s + "nixos-system/init"},
		Network:      network,
		Shares: []manifest.VMShare{
			{Tag: "nix-store", Source: "store", Target: "/nix/store", ReadOnly: true},
			{Tag: "csb-meta", Source: "meta", Target: "/mnt/claude-sandbox/meta", ReadOnly: true},
			{Tag: "csb-project", Source: "project", Target: "/mnt/claude-sandbox/project"},
			{Tag: "csb-ssh", Source: "ssh", Target: "/mnt/claude-sandbox/ssh", ReadOnly: true},
		},
		QEMU:      s + "qemu/bin/qemu-system-x86_64",
		MemoryMiB: 1024, Cores: 1, Agent: s + "agent",
	}
	return m
}

func vmRuntime(t *testing.T, network bool) *launch.Runtime {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	home := t.TempDir()
	project := filepath.Join(t.TempDir(), "my,project")
	if err := os.Mkdir(project, 0o755); err != nil {
		t.Fatal(err)
	}
	return &launch.Runtime{
		Project: project, Home: home, User: "u", Network: network, Accel: launch.AccelTCG,
		Command:   []string{"echo", "hi"},
		LookupEnv: env(map[string]string{"ANTHROPIC_API_KEY": "sk-secret-123", "TERM": "xterm"}),
	}
}

func TestQEMUArgsNetworkSharesAndNoSecrets(t *testing.T) {
	for _, network := range []bool{true, false} {
		m, rt := vmManifest(network), vmRuntime(t, network)
		p, err := planVMRun(m, rt, "0123456789ab")
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Join(p.Args, " ")
		if p.Args[0] != m.VM.QEMU {
			t.Errorf("QEMU = %q, want the manifest's", p.Args[0])
		}
		switch {
		case network && !strings.Contains(args, "-nic user,model=virtio-net-pci"):
			t.Errorf("network on, no user-mode NIC: %s", args)
		case !network && index(p.Args, "-nic", "none") < 0:
			t.Errorf("--no-network must give no NIC at all: %s", args)
		}
		if strings.Contains(args, "sk-secret-123") || strings.Contains(args, "ANTHROPIC_API_KEY") {
			t.Errorf("the API key is on QEMU's command line: %s", args)
		}
		// A comma in the project path is doubled, so it cannot add options.
		if !strings.Contains(args, "path="+strings.ReplaceAll(rt.Project, ",", ",,")+",security_model=none") {
			t.Errorf("project share missing or unescaped: %s", args)
		}
		for _, want := range []string{"mount_tag=nix-store", "mount_tag=csb-meta", "mount_tag=csb-project", "mount_tag=csb-ssh"} {
			if !strings.Contains(args, want) {
				t.Errorf("%s missing: %s", want, args)
			}
		}
		// Read-only shares are read-only in QEMU, not only in the guest's fstab.
		for i, a := range p.Args {
			if a == "-fsdev" && strings.Contains(p.Args[i+1], "/meta,") && !strings.Contains(p.Args[i+1], "readonly=on") {
				t.Errorf("metadata share is writable: %s", p.Args[i+1])
			}
			if a == "-fsdev" && strings.Contains(p.Args[i+1], rt.Project) && strings.Contains(p.Args[i+1], "readonly=on") {
				t.Errorf("project share is read-only: %s", p.Args[i+1])
			}
		}
		// A missing ~/.ssh is an empty stand-in, never something else of the host's.
		if p.Present["ssh"] || p.Sources["ssh"] != filepath.Join(p.RunDir, vmEmptyDir) {
			t.Errorf("absent ~/.ssh shared as %q", p.Sources["ssh"])
		}
		if i := index(p.Args, "-append"); i < 0 || p.Args[i+1] != strings.Join(m.VM.KernelParams, " ") {
			t.Errorf("kernel command line is not the manifest's: %v", p.Args)
		}
	}
}

func TestPlanVMRefusesMismatchesAndBadFlags(t *testing.T) {
	m, rt := vmManifest(true), vmRuntime(t, false)
	var start *launch.VMStartError
	if _, err := planVMRun(m, rt, "0123456789ab"); !errors.As(err, &start) {
		t.Errorf("guest built with network, run without: err = %v", err)
	}
	rt.Network = true
	rt.FS = "nfs"
	var opt *launch.OptionError
	if _, err := planVMRun(m, rt, "0123456789ab"); !errors.As(err, &opt) {
		t.Errorf("--fs nfs: err = %v", err)
	}
	rt.FS, rt.Accel = "", "hvf"
	if _, err := planVMRun(m, rt, "0123456789ab"); !errors.As(err, &opt) {
		t.Errorf("--accel hvf: err = %v", err)
	}
}

func TestChooseAccelKVMNotUsable(t *testing.T) {
	old := kvmUsable
	defer func() { kvmUsable = old }()
	kvmUsable = func() error { return os.ErrNotExist }
	var noKVM *launch.NoKVMError
	if _, _, err := chooseAccel(launch.AccelKVM); !errors.As(err, &noKVM) || noKVM.Auto {
		t.Errorf("--accel kvm without /dev/kvm: err = %v", err)
	}
	if accel, auto, err := chooseAccel(launch.AccelAuto); err != nil || accel != launch.AccelTCG || !auto {
		t.Errorf("--accel auto without /dev/kvm = %s, %t, %v; want tcg", accel, auto, err)
	}
	kvmUsable = func() error { return nil }
	if accel, auto, err := chooseAccel(launch.AccelAuto); err != nil || accel != launch.AccelKVM || !auto {
		t.Errorf("--accel auto with a usable /dev/kvm = %s, %t, %v; want kvm", accel, auto, err)
	}
}

func TestMetadataIsPrivateAndNULSeparated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "meta")
	argv := []string{"sh", "-c", "echo 'a b'\n$HOME; `x`"}
	m := &vmMeta{Run: map[string]string{"nonce": "n", "home": "/home/u"}, Argv: argv, Env: []string{"ANTHROPIC_API_KEY=k=v"},
		Files: map[string][]byte{"gitconfig": []byte("[user]\n")}}
	if err := m.write(dir); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o700 {
		t.Errorf("metadata dir mode %o, want 700", st.Mode().Perm())
	}
	for _, name := range []string{"run", "argv", "env", "gitconfig"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %o, want 600", name, err, st.Mode().Perm())
		}
	}
	data, _ := os.ReadFile(filepath.Join(dir, "argv"))
	if got := decodeNUL(data); !slices.Equal(got, argv) {
		t.Errorf("argv round trip: %q", got)
	}
	run, err := readRun(dir)
	if err != nil || run["nonce"] != "n" || run["home"] != "/home/u" {
		t.Errorf("readRun = %v, %v", run, err)
	}
	if _, err := encodeNUL([]string{"a\x00b"}); err == nil {
		t.Error("an argument with a NUL was accepted")
	}
}

func TestGuestIdentityKeepsPasswdSafe(t *testing.T) {
	for _, tc := range []struct{ user, home, wantUser, wantHome string }{
		{"alice", "/home/alice", "alice", "/home/alice"},
		{"evil:x:0:0", "/home/e", "user", "/home/e"},
		{"bob", "/home/b:ad", "bob", "/home/bob"},
		{"bob", "relative", "bob", "/home/bob"},
	} {
		user, _, _, home := guestIdentity(&launch.Runtime{User: tc.user, Home: tc.home})
		if user != tc.wantUser || home != tc.wantHome {
			t.Errorf("guestIdentity(%q, %q) = %q, %q", tc.user, tc.home, user, home)
		}
	}
}

func TestGuestEnvIsTheAllowlist(t *testing.T) {
	m := vmManifest(true)
	rt := &launch.Runtime{Home: "/root", User: "root", LookupEnv: env(map[string]string{"ANTHROPIC_API_KEY": "k", "AWS_SECRET_ACCESS_KEY": "s"})}
	got, err := guestEnv(m, rt, "/home/user", "user")
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(got, "\n")
	for _, want := range []string{"ANTHROPIC_API_KEY=k", "HOME=/home/user", "USER=user", "CLAUDE_SANDBOX_BACKEND=vm"} {
		if !slices.Contains(got, want) {
			t.Errorf("%s missing: %s", want, joined)
		}
	}
	if strings.Contains(joined, "AWS_SECRET") {
		t.Errorf("a host secret crossed: %s", joined)
	}
}

// fakeQMP serves QMP on a Unix socket the way QEMU does, or (silent) accepts
// and never answers, as a wedged QEMU would.
func fakeQMP(t *testing.T, path string, silent bool) <-chan string {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	cmds := make(chan string, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				if silent {
					time.Sleep(time.Minute)
					return
				}
				c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}` + "\n"))
				// QMP is a stream of JSON values, not lines: go-qemu sends
				// commands without a newline.
				dec := json.NewDecoder(c)
				for {
					var cmd struct{ Execute string }
					if dec.Decode(&cmd) != nil {
						return
					}
					cmds <- cmd.Execute
					switch cmd.Execute {
					case "query-status":
						c.Write([]byte(`{"return": {"running": true, "singlestep": false, "status": "running"}}` + "\n"))
					case "query-kvm":
						c.Write([]byte(`{"return": {"enabled": false, "present": true}}` + "\n"))
					default:
						c.Write([]byte(`{"return": {}}` + "\n"))
					}
				}
			}(c)
		}
	}()
	return cmds
}

func TestQMPStatusAndPowerdown(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	cmds := fakeQMP(t, sock, false)
	if st := (Backend{}).Status(context.Background(), &launch.Record{QMP: sock}); st != "running, tcg" {
		t.Fatalf("Status = %q", st)
	}
	c, err := dialQMP(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Powerdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for len(cmds) > 0 {
		seen = append(seen, <-cmds)
	}
	if !slices.Contains(seen, "system_powerdown") {
		t.Errorf("QMP commands sent: %v", seen)
	}
}

func TestQMPWedgedQEMUDoesNotHang(t *testing.T) {
	old := qmpTimeout
	qmpTimeout = 300 * time.Millisecond
	defer func() { qmpTimeout = old }()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	fakeQMP(t, sock, true)
	start := time.Now()
	if _, err := dialQMP(context.Background(), sock); err == nil {
		t.Fatal("a silent QMP socket was taken for QEMU")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("gave up after %s, want about %s", d, qmpTimeout)
	}
}

func TestSweepRunDirsKeepsLiveAndLockedOnes(t *testing.T) {
	state := t.TempDir()
	mk := func(id string) string {
		d := filepath.Join(state, "vm", id)
		os.MkdirAll(d, 0o700)
		os.WriteFile(filepath.Join(d, vmLock), nil, 0o600)
		os.WriteFile(filepath.Join(d, vmQMPSock), nil, 0o600)
		return d
	}
	dead, locked := mk("dead"), mk("locked")
	f, _ := os.OpenFile(filepath.Join(locked, vmLock), os.O_RDWR, 0)
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	sweepRunDirs(state)
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Error("the run directory of a dead VM survived the sweep")
	}
	if _, err := os.Stat(locked); err != nil {
		t.Error("the run directory of a live supervisor was swept")
	}
}

// fakeQEMU is a stand-in for qemu-system-*: a script that plays a guest on
// the console (its stdout), reading the nonce from the metadata share.
func fakeQEMU(t *testing.T, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "qemu")
	body := "#!/bin/sh\nnonce=$(tr '\\000' '\\n' < meta/run | sed -n 's/^nonce=//p')\n" +
		"mark() { printf '\\033_claude-sandbox:%s:%s\\033\\\\' \"$nonce\" \"$1\"; }\n" + script + "\n"
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

type superviseResult struct {
	err    error
	stdout string
	stderr string
}

func superviseFake(t *testing.T, accel, script string) superviseResult {
	t.Helper()
	m, rt := vmManifest(false), vmRuntime(t, false)
	p, err := planVMRun(m, rt, "0123456789ab")
	if err != nil {
		t.Fatal(err)
	}
	p.QEMU = fakeQEMU(t, script)
	p.Args = []string{p.QEMU}
	p.Accel = accel
	inR, inW, _ := os.Pipe()
	inW.Close()
	out, _ := os.CreateTemp(t.TempDir(), "out")
	errf, _ := os.CreateTemp(t.TempDir(), "err")
	env, err := guestEnv(m, rt, p.Home, p.User)
	if err != nil {
		t.Fatal(err)
	}
	// What the launch prepares before a start.
	if err := launch.EnsureProjectStateDir(p.StateDir, rt.Project); err != nil {
		t.Fatal(err)
	}
	rec := &launch.Record{ID: p.ID, Project: rt.Project, Backend: Name}
	sv := &vmSupervisor{plan: p, command: rt.Command, env: env, rec: rec, term: openTerminal(inR, out), stderr: errf, waitQMP: func() error { return nil }}
	err = sv.run(context.Background())
	o, _ := os.ReadFile(out.Name())
	e, _ := os.ReadFile(errf.Name())
	if _, serr := os.Stat(p.RunDir); !os.IsNotExist(serr) {
		t.Errorf("run directory %s left behind", p.RunDir)
	}
	return superviseResult{err, string(o), string(e)}
}

func TestSupervisorRelaysBetweenMarkersAndPassesTheStatus(t *testing.T) {
	r := superviseFake(t, launch.AccelTCG, `printf '[    0.000000] Linux version\nboot noise\n'; mark up; printf 'payload output\n'; mark exit=7; printf 'reboot: Power down\n'`)
	var st *launch.ExitStatusError
	if !errors.As(r.err, &st) || st.Code != 7 {
		t.Fatalf("err = %v, want exit status 7", r.err)
	}
	if r.stdout != "payload output\n" {
		t.Errorf("stdout = %q: boot and shutdown noise must not reach it", r.stdout)
	}
	r = superviseFake(t, launch.AccelTCG, `mark up; echo ok; mark exit=0`)
	if r.err != nil || r.stdout != "ok\n" {
		t.Errorf("exit 0: err = %v, stdout %q", r.err, r.stdout)
	}
}

func TestSupervisorBootFailureSaysWhy(t *testing.T) {
	r := superviseFake(t, launch.AccelTCG, `echo 'stage 1: cannot mount csb-meta'; exit 0`)
	var start *launch.VMStartError
	if !errors.As(r.err, &start) || !strings.Contains(r.err.Error(), "cannot mount csb-meta") || start.Log == "" {
		t.Fatalf("err = %v, want the guest's last line and a boot log", r.err)
	}
}

func TestSupervisorStuckKVMGuest(t *testing.T) {
	old := bootWatchdog
	bootWatchdog = 500 * time.Millisecond
	defer func() { bootWatchdog = old }()
	r := superviseFake(t, launch.AccelKVM, `printf 'SeaBIOS\nBooting from ROM..\n'; sleep 30`)
	var noKVM *launch.NoKVMError
	if !errors.As(r.err, &noKVM) || !strings.Contains(noKVM.Hint(), "--accel tcg") {
		t.Fatalf("err = %v, want no-KVM with a hint to use --accel tcg", r.err)
	}
	r = superviseFake(t, launch.AccelKVM, `echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2; exit 134`)
	if !errors.As(r.err, &noKVM) {
		t.Fatalf("QEMU's KVM error: err = %v", r.err)
	}
}

func TestSupervisorKilledQEMU(t *testing.T) {
	r := superviseFake(t, launch.AccelTCG, `mark up; echo started; kill -9 $$`)
	var st *launch.ExitStatusError
	if !errors.As(r.err, &st) || st.Code != 137 || !strings.Contains(r.stderr, "killed") {
		t.Fatalf("err = %v, stderr %q; want status 137 and a notice", r.err, r.stderr)
	}
}

// TestPlanWritesNothing: deciding a VM start (what --dry-run prints)
// creates no state directory, run directory or anything else.
func TestPlanWritesNothing(t *testing.T) {
	m, rt := vmManifest(true), vmRuntime(t, true)
	stateHome := os.Getenv("XDG_STATE_HOME")
	p := launch.NewPlan(Backend{}, m, rt, "0123456789ab")
	if err := (Backend{}).Plan(p, m, rt); err != nil {
		t.Fatal(err)
	}
	if entries, err := os.ReadDir(stateHome); err != nil || len(entries) != 0 {
		t.Errorf("planning wrote into the state home: %v %v", entries, err)
	}
	if p.Invocation.Path != m.VM.QEMU || len(p.Mounts) != len(m.VM.Shares) || p.Mounts[0].Tag != "nix-store" {
		t.Errorf("plan: %s, mounts %+v", p.Invocation.Path, p.Mounts)
	}
}
