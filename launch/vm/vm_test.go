package vm

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/internal/launchtest"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/agent"
	"github.com/claude-sandbox/claude-sandbox/manifest"
	"github.com/claude-sandbox/claude-sandbox/secrets"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
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
			{Tag: "nix-store", Source: "store", Target: "/nix/.ro-store", ReadOnly: true},
			{Tag: "csb-meta", Source: "meta", Target: "/mnt/claude-sandbox/meta", ReadOnly: true},
			{Tag: "csb-project", Source: "project", Target: "/mnt/claude-sandbox/project"},
			{Tag: "csb-git", Source: "git", Target: "/mnt/claude-sandbox/git", ReadOnly: true},
		},
		QEMU:      s + "qemu/bin/qemu-system-x86_64",
		MemoryMiB: 1024, Cores: 1, Mkfs: s + "e2fsprogs/bin/mkfs.ext4",
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
	rt := &launch.Runtime{
		Project: project, Home: home, User: "u", Network: network, Accel: launch.AccelTCG,
		Command:   []string{"echo", "hi"},
		LookupEnv: env(map[string]string{"ANTHROPIC_API_KEY": "sk-secret-123", "TERM": "xterm"}),
	}
	if network {
		rt.Egress = &launch.Egress{Mode: launch.NetAllowlist}
	}
	return rt
}

// TestQEMUArgsPortStoreSharesAndNoSecrets: whatever the network mode the
// guest has no network card; the agent's virtio-serial port, the project's
// store disk and the shares are there, read-only where they must be;
// nothing secret is on the command line.
func TestQEMUArgsPortStoreSharesAndNoSecrets(t *testing.T) {
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
		if index(p.Args, "-nic", "none") < 0 || strings.Contains(args, "-nic user") || strings.Contains(args, "-netdev") {
			t.Errorf("network=%t: the guest must have no network card: %s", network, args)
		}
		if !strings.Contains(args, "virtserialport,bus=vser.0,chardev=agent,name=org.claude-sandbox.agent") ||
			!strings.Contains(args, "socket,id=agent,path=agent.sock,server=on,wait=off") {
			t.Errorf("no agent port: %s", args)
		}
		store := StoreImage(p.StateDir)
		if p.Store != store || !strings.Contains(args, "file="+strings.ReplaceAll(store, ",", ",,")+",format=raw,if=none,id=nixstore") {
			t.Errorf("the store disk is not the project's %s: %s", store, args)
		}
		if strings.Contains(args, "sk-secret-123") || strings.Contains(args, "ANTHROPIC_API_KEY") {
			t.Errorf("the API key is on QEMU's command line: %s", args)
		}
		// A comma in the project path is doubled, so it cannot add options.
		if !strings.Contains(args, "path="+strings.ReplaceAll(rt.Project, ",", ",,")+",security_model=none") {
			t.Errorf("project share missing or unescaped: %s", args)
		}
		for _, want := range []string{"mount_tag=nix-store", "mount_tag=csb-meta", "mount_tag=csb-project", "mount_tag=csb-git"} {
			if !strings.Contains(args, want) {
				t.Errorf("%s missing: %s", want, args)
			}
		}
		if strings.Contains(args, ".ssh") {
			t.Errorf("~/.ssh is shared: %s", args)
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
		// A missing ~/.config/git is an empty stand-in, never something else of the host's.
		if p.Present["git"] || p.Sources["git"] != filepath.Join(p.RunDir, vmEmptyDir) {
			t.Errorf("absent ~/.config/git shared as %q", p.Sources["git"])
		}
		if i := index(p.Args, "-append"); i < 0 || p.Args[i+1] != strings.Join(m.VM.KernelParams, " ") {
			t.Errorf("kernel command line is not the manifest's: %v", p.Args)
		}
		// The proxy is offered exactly when the network is on.
		env := p.extraEnv()
		if (env["HTTPS_PROXY"] == "http://"+ProxyAddr) != network || (env["ALL_PROXY"] == "socks5h://"+ProxyAddr) != network ||
			env["NO_PROXY"] != launch.ProxyEnv(rt.Egress)["NO_PROXY"] {
			t.Errorf("network=%t: proxy variables %v, want every backend's (launch.ProxyEnv)", network, env)
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
	rt.Accel = launch.AccelTCG
	m.VM.Mkfs = ""
	if _, err := planVMRun(m, rt, "0123456789ab"); !errors.As(err, &start) {
		t.Errorf("a guest without a writable store: err = %v", err)
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

// TestMetadataIsPrivateAndKeepsKeysOut: the metadata share is the
// calling user's alone (it carries the API key), the agent's configuration
// round-trips, and of ~/.ssh only config, known_hosts and public keys are
// copied.
func TestMetadataIsPrivateAndKeepsKeysOut(t *testing.T) {
	m, rt := vmManifest(true), vmRuntime(t, true)
	for name, text := range map[string]string{"config": "Host x\n", "known_hosts": "x ssh-ed25519 AAAA\n", "id_ed25519.pub": "ssh-ed25519 AAAA\n", "id_ed25519": "PRIVATE\n", "id_rsa": "PRIVATE\n"} {
		os.MkdirAll(filepath.Join(rt.Home, ".ssh"), 0o700)
		os.WriteFile(filepath.Join(rt.Home, ".ssh", name), []byte(text), 0o600)
	}
	os.WriteFile(filepath.Join(rt.Home, ".gitconfig"), []byte("[user]\n"), 0o644)
	p, err := planVMRun(m, rt, "0123456789ab")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(p.RunDir, 0o700)
	env := []string{"ANTHROPIC_API_KEY=k=v", "PATH=/bin"}
	if err := p.writeMeta(env); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(p.RunDir, vmMetaDir)
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("metadata dir mode %o, want 700", st.Mode().Perm())
	}
	for _, name := range []string{agent.ConfigFile, "gitconfig", "ssh/config"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v, want 600", name, err, st)
		}
	}
	ssh, _ := os.ReadDir(filepath.Join(dir, agent.SSHDir))
	var names []string
	for _, e := range ssh {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"config", "id_ed25519.pub", "known_hosts"}) {
		t.Errorf("~/.ssh in the guest: %v, want config, known_hosts and the public key only", names)
	}
	if st, err := os.Stat(filepath.Join(dir, agent.Binary)); err != nil || st.Mode()&0o100 == 0 {
		t.Errorf("the agent is not in the share: %v", err)
	}
	var c agent.Config
	data, _ := os.ReadFile(filepath.Join(dir, agent.ConfigFile))
	if err := json.Unmarshal(data, &c); err != nil || !slices.Equal(c.Env, env) || c.Proxy != ProxyAddr || !c.SSH || c.Project != rt.Project {
		t.Errorf("run.json = %+v, %v", c, err)
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

func TestSweepRunDirsKeepsLiveAndNewOnes(t *testing.T) {
	state := t.TempDir()
	mk := func(id string, age time.Duration) string {
		d := launch.RunDir(state, id)
		os.MkdirAll(d, 0o700)
		old := time.Now().Add(-age)
		os.Chtimes(d, old, old)
		return d
	}
	dead, fresh := mk("dead", time.Hour), mk("fresh", 0)
	sweepRunDirs(state)
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Error("the run directory of a dead VM survived the sweep")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Error("the run directory of a VM being set up was swept")
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
	// The shares, then the protection (here ~/.claude of the guest's own:
	// the host has none and the launch may not make one).
	if p.Invocation.Path != m.VM.QEMU || len(p.Mounts) < len(m.VM.Shares) || p.Mounts[0].Tag != "nix-store" {
		t.Errorf("plan: %s, mounts %+v", p.Invocation.Path, p.Mounts)
	}
	if p.NixGateway != "" {
		t.Errorf("the guest was planned the host daemon's gateway (%s): it has a daemon of its own", p.NixGateway)
	}
}

// TestGuestProtectionRendersTheCoresMounts: the core's protection mounts
// (host paths, whatever decides them) reach the agent on the guest's
// paths: the project's as they are, the host's ~/.claude through its
// share, the home as the guest user's; a mount of ~/.claude itself
// replaces the share's plain bind; a source on no share is an error, not
// a protection dropped.
func TestGuestProtectionRendersTheCoresMounts(t *testing.T) {
	m, rt := vmManifest(true), vmRuntime(t, true)
	m.VM.Shares = append(m.VM.Shares, manifest.VMShare{Tag: "csb-claude", Source: "claude", Target: "/mnt/claude-sandbox/claude"})
	claude := filepath.Join(rt.Home, ".claude")
	os.MkdirAll(filepath.Join(claude, "projects"), 0o700)
	p, err := planVMRun(m, rt, "0123456789ab")
	if err != nil {
		t.Fatal(err)
	}
	pr := rt.Project
	got, err := p.guestProtection([]launch.Mount{
		{Kind: launch.Bind, Source: pr + "/.git", Dest: pr + "/.git"},
		{Kind: launch.ROBind, Source: pr + "/.vscode", Dest: pr + "/.vscode"},
		{Kind: launch.Tmpfs, Dest: pr + "/.envrc", Mode: 0o555},
		{Kind: launch.Dir, Dest: claude, Mode: 0o700},
		{Kind: launch.Bind, Source: claude + "/projects", Dest: claude + "/projects"},
		{Kind: launch.Symlink, Source: claude + "/projects", Dest: claude + "/p"},
	})
	if err != nil {
		t.Fatal(err)
	}
	home := p.Home
	want := []agent.Protect{
		{Kind: agent.ProtectBind, Path: pr + "/.git"},
		{Kind: agent.ProtectReadOnly, Path: pr + "/.vscode"},
		{Kind: agent.ProtectTmpfs, Path: pr + "/.envrc", Mode: 0o555},
		{Kind: agent.ProtectDir, Path: home + "/.claude", Mode: 0o700},
		{Kind: agent.ProtectBind, Source: agent.Mnt + "/claude/projects", Path: home + "/.claude/projects"},
		{Kind: agent.ProtectSymlink, Source: home + "/.claude/projects", Path: home + "/.claude/p"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("guest protection:\n got %+v\nwant %+v", got, want)
	}
	p.guestProtect = got
	for _, b := range p.agentConfig(nil).Binds {
		if b.Share == "claude" {
			t.Errorf("~/.claude is bound whole although the protection renders it: %+v", b)
		}
	}
	if _, err := p.guestProtection([]launch.Mount{{Kind: launch.ROBind, Source: "/etc/hosts", Dest: pr + "/x"}}); err == nil {
		t.Error("a source on no share was accepted")
	}
}

// TestSecretsStayOutsideTheGuest: with a network, the guest's environment
// holds the API key's placeholder and the trust variables, never the
// value; the trust files and Claude Code's login copy are planned in the
// metadata share (all the guest sees of the run directory), and the agent
// is told to bind them; the supervisor's spec carries the sealed value,
// the trust directory and the login.
func TestSecretsStayOutsideTheGuest(t *testing.T) {
	m, rt := vmManifest(true), vmRuntime(t, true)
	m.VM.Shares = append(m.VM.Shares, manifest.VMShare{Tag: "csb-claude", Source: "claude", Target: "/mnt/claude-sandbox/claude"})
	rt.Secrets = secrets.BuiltIns(false)
	cred := filepath.Join(rt.Home, ".claude", ".credentials.json")
	os.MkdirAll(filepath.Dir(cred), 0o700)
	os.WriteFile(cred, []byte(`{"claudeAiOauth":{"accessToken":"sk-ant-oat01-a","refreshToken":"sk-ant-ort01-r"}}`), 0o600)
	l := &launch.Launch{Backend: Backend{}, Runtime: rt, Manifest: m, Closure: launchtest.Store + "closure"}
	p, err := l.Plan()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Invocation.Close()
	vp := p.Detail.(*vmPlan)
	key := ""
	for _, kv := range p.Env {
		if v, ok := strings.CutPrefix(kv, "ANTHROPIC_API_KEY="); ok {
			key = v
		}
		if strings.Contains(kv, "sk-secret-123") {
			t.Errorf("the real value is in the guest's environment: %s", kv)
		}
	}
	if key == "" || !slices.Contains(p.Env, "SSL_CERT_FILE="+agent.TrustInside+"/ca-bundle.crt") {
		t.Errorf("want a placeholder and the trust variables: %q", p.Env)
	}
	meta := filepath.Join(vp.RunDir, vmMetaDir)
	if p.TrustDir != filepath.Join(meta, agent.TrustDir) || p.ClaudeLogin != filepath.Join(meta, agent.LoginFile) || p.ChromiumPolicies != filepath.Join(meta, agent.ChromiumDir) {
		t.Errorf("trust %q, login %q, chromium %q: want them in the metadata share %s", p.TrustDir, p.ClaudeLogin, p.ChromiumPolicies, meta)
	}
	c := vp.agentConfig(p.Env)
	if !c.Trust || !slices.Contains(c.Login, filepath.Join(vp.Home, ".claude", ".credentials.json")) || !slices.Contains(c.Login, launch.ClaudeHostView+"/.credentials.json") || !slices.Contains(c.Login, agent.Mnt+"/claude/.credentials.json") {
		t.Errorf("agent: trust %t, login %q", c.Trust, c.Login)
	}
	var spec control.Spec
	spec.Net = &control.NetSpec{Mode: launch.NetAllowlist}
	spec.SSHAgent = &control.SSHAgentSpec{}
	vp.secretServices(&spec)
	b := spec.Broker
	if b == nil || len(b.Secrets) != 1 || b.Secrets[0].Value != "sk-secret-123" || b.Secrets[0].Placeholder != key || b.TrustDir != p.TrustDir || b.Login == nil || b.Login.SandboxFile != p.ClaudeLogin {
		t.Errorf("the supervisor's broker spec: %+v", b)
	}
}
