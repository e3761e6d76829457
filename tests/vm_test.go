package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/launch"
)

// End-to-end tests of the vm backend: the guest built from the fixture
// (Debian's kernel, a busybox initrd honouring the NixOS template's boot
// contract), booted by real QEMU under TCG and supervised by claude-sandbox
// over QMP. Every boot costs 10–20 s of emulation, so each test combines as
// many probes as one boot can carry.

func requireVMHost(t testing.TB) {
	t.Helper()
	requireSandboxHost(t)
	testenv.RequireProgram(t, "qemu-system-x86_64")
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	testenv.Require(t, len(kernels) > 0, "no kernel in /boot for the fixture's guest (apt-get install linux-image-amd64)")
}

// vmHome is a home directory with what the guest shares from it: ~/.ssh
// (read-only), ~/.claude (read-write), ~/.gitconfig (copied).
func vmHome(t *testing.T) string {
	t.Helper()
	home, err := os.MkdirTemp(workDir, "vmhome-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	for path, text := range map[string]string{
		".ssh/config":           "Host example\n",
		".claude/settings.json": "{}\n",
		".gitconfig":            "[user]\n\tname = VM Test\n",
	} {
		p := filepath.Join(home, path)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return home
}

func vmOpts(home string, extra ...string) runOpts {
	return runOpts{env: append([]string{"HOME=" + home}, extra...)}
}

// vmRecord waits for the running VM of a project to be registered with its
// QEMU process and sockets.
func vmRecord(t *testing.T, bg *background, project string) *launch.Record {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		recs, _ := launch.Running(stateDir(sharedDirs(), project))
		for _, r := range recs {
			if r.Backend == "vm" && r.QMP != "" {
				return r
			}
		}
		if bg.exited() {
			t.Fatalf("claude-sandbox ended (status %d) before the VM was registered:\n%s", bg.status, bg.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the VM was not registered within 60s")
	return nil
}

// sockets lists the Unix sockets left under a directory.
func sockets(root string) []string {
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSocket != 0 {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func TestVMBuildChecksTheGuestMounts(t *testing.T) {
	requireVMHost(t)
	b := buildJSON(t, runOpts{}, "vm")
	m, err := os.ReadFile(filepath.Join(b.OutPath, "share/claude-sandbox/manifest.json"))
	if err != nil || !strings.Contains(string(m), `"backend":"vm"`) {
		t.Fatalf("manifest: %v\n%s", err, m)
	}
	// The network is part of the guest: another configuration, another key.
	off := buildJSON(t, runOpts{}, "vm", "--no-network")
	if off.Key == b.Key || off.OutPath == b.OutPath {
		t.Errorf("--no-network built the same guest (%s)", b.OutPath)
	}
	// A module that takes the mounts away (as importing qemu-vm.nix does
	// with its fileSystems override) fails the build instead of booting a
	// guest that mounts nothing.
	module := filepath.Join(t.TempDir(), "lose-mounts.nix")
	os.WriteFile(module, []byte("{ lib, ... }: { fileSystems = lib.mkForce { \"/\" = { device = \"tmpfs\"; fsType = \"tmpfs\"; }; }; }\n"), 0o644)
	r := run(t, runOpts{}, "build", "vm", "--module", module)
	if r.code == 0 || !strings.Contains(r.stderr, "does not mount share") {
		t.Errorf("a guest without its shares built: %s", r)
	}
}

// TestVMKilledQEMULeavesNothingBehind: QEMU killed mid-boot; the launch
// ends with a clear error, no socket stays behind, and the next launch of
// the same project runs (TestVMRunsTheCommand uses the same project).
func TestVMKilledQEMULeavesNothingBehind(t *testing.T) {
	requireVMHost(t)
	home := vmHome(t)
	p := vmProject(t)
	bg := startBackground(t, vmOpts(home), "--backend", "vm", "--accel", "tcg", "exec", p, "--", "sleep", "600")
	rec := vmRecord(t, bg, p)
	if err := syscall.Kill(rec.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	code := bg.wait(t, 30*time.Second)
	if code == 0 || !strings.Contains(bg.out.String(), "killed") {
		t.Errorf("a killed QEMU: exit %d, output:\n%s", code, bg.out)
	}
	state := stateDir(sharedDirs(), p)
	if left := sockets(state); len(left) > 0 {
		t.Errorf("sockets left behind: %v", left)
	}
	if recs, _ := launch.Running(state); len(recs) > 0 {
		t.Errorf("the killed VM is still registered: %+v", recs[0])
	}
}

var vmProjectPath string

// vmProject is one project shared by the vm tests that run in sequence, so
// a later test also shows that an earlier one left nothing in its way.
func vmProject(t *testing.T) string {
	if vmProjectPath == "" {
		d, err := os.MkdirTemp(workDir, "vmproject-")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(d, 0o755)
		vmProjectPath = filepath.Join(d, "project with space")
		if err := os.Mkdir(vmProjectPath, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return vmProjectPath
}

// TestVMRunsTheCommand boots once with the network on and checks, inside
// the guest: the command runs as the calling user in the project and can
// write it; read-only shares (~/.ssh, the metadata, the store) can be read
// but not written; the user-mode NAT reaches the host; the environment is
// the allowlist; and, from the host, that the API key is neither on QEMU's
// command line nor in a file other users can read. The command's exit
// status comes back as claude-sandbox's.
func TestVMRunsTheCommand(t *testing.T) {
	requireVMHost(t)
	home := vmHome(t)
	p := vmProject(t)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "host-says-hello") })}
	go srv.Serve(l)
	defer srv.Close()
	port := l.Addr().(*net.TCPAddr).Port

	script := fmt.Sprintf(`
echo "uid=$(id -u) pwd=$PWD home=$HOME backend=$CLAUDE_SANDBOX_BACKEND key=${ANTHROPIC_API_KEY:-unset} aws=${AWS_SECRET_ACCESS_KEY:-unset}"
echo written-in-vm > "$PWD/from-vm.txt" && echo project-write=ok
grep -q example "$HOME/.ssh/config" && echo ssh-read=ok
touch "$HOME/.ssh/new" 2>/dev/null && echo ssh-write=WRITABLE || echo ssh-write=refused
grep -q 'VM Test' "$HOME/.gitconfig" && echo gitconfig=ok
test -e "$HOME/.claude/settings.json" && echo claude-dir=ok
echo x > /mnt/claude-sandbox/meta/argv 2>/dev/null && echo meta-write=WRITABLE || echo meta-write=refused
touch /nix/store/claude-sandbox-probe 2>/dev/null && echo store-write=WRITABLE || echo store-write=refused
ls /sys/class/net | tr '\n' ' '; echo
curl -s --max-time 20 http://10.0.2.2:%d/ ; echo
echo "invocation=${INVOCATION_ID:-unset}"
claude --version
exit 42
`, port)
	bg := startBackground(t, vmOpts(home, "ANTHROPIC_API_KEY=sk-test-vm-key", "AWS_SECRET_ACCESS_KEY=aws-secret"),
		"--backend", "vm", "--accel", "tcg", "exec", p, "--", "bash", "-c", script)
	rec := vmRecord(t, bg, p)

	// While it runs: nothing secret where other host users could look.
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", rec.PID))
	if strings.Contains(string(cmdline), "sk-test-vm-key") {
		t.Errorf("the API key is on QEMU's command line")
	}
	meta := filepath.Join(filepath.Dir(rec.Console), "meta")
	if st, err := os.Stat(meta); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("metadata share %s: %v, mode %v, want 0700", meta, err, st.Mode().Perm())
	}
	entries, _ := os.ReadDir(meta)
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.Mode().Perm()&0o077 != 0 {
			t.Errorf("metadata file %s is readable by others (%v)", e.Name(), info.Mode())
		}
	}
	if st, err := os.Stat(rec.QMP); err != nil || st.Mode()&fs.ModeSocket == 0 {
		t.Errorf("no QMP socket at %s: %v", rec.QMP, err)
	}

	code := bg.wait(t, 5*time.Minute)
	out := bg.out.String()
	if code != 42 {
		t.Fatalf("exit status %d, want the command's 42; output:\n%s", code, out)
	}
	want := []string{
		fmt.Sprintf("uid=%d pwd=%s home=%s backend=vm key=sk-test-vm-key aws=unset", os.Getuid(), p, home),
		"project-write=ok", "ssh-read=ok", "ssh-write=refused", "gitconfig=ok", "claude-dir=ok",
		"meta-write=refused", "store-write=refused", "eth0 lo", "host-says-hello",
		// The agent's clean-up left no variable of the guest's service behind
		// (it needs bashInteractive's compgen).
		"invocation=unset",
		// An unpatched binary runs: the loader at its FHS place is nix-ld,
		// not NixOS's stub-ld.
		"(Claude Code)",
	}
	if strings.Contains(out, "compgen") || strings.Contains(out, "stub-ld") {
		t.Errorf("the guest's set-up failed before the command:\n%s", out)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("missing %q in the guest's output:\n%s", w, out)
		}
	}
	if data, err := os.ReadFile(filepath.Join(p, "from-vm.txt")); err != nil || string(data) != "written-in-vm\n" {
		t.Errorf("the file the guest wrote: %q, %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(home, ".ssh", "new")); err == nil {
		t.Error("the guest wrote into the read-only ~/.ssh")
	}
	if strings.Contains(out, "Linux version") || strings.Contains(out, "Power down") {
		t.Errorf("boot or shutdown noise reached the command's output:\n%s", out)
	}
	if left := sockets(stateDir(sharedDirs(), p)); len(left) > 0 {
		t.Errorf("sockets left behind: %v", left)
	}
}

// TestVMNoNetworkEnterAndStop boots a guest without network and, while its
// command runs: `enter` runs a second command in it, `ps` lists it, and
// `stop` powers it down over QMP — gracefully: the command gets SIGTERM and
// its handler runs before the guest powers off.
func TestVMNoNetworkEnterAndStop(t *testing.T) {
	requireVMHost(t)
	home := vmHome(t)
	p := vmProject(t)
	o := vmOpts(home)
	script := `ls /sys/class/net | tr '\n' ' ' > "$PWD/net.txt"
trap 'echo graceful > "$PWD/stopped"; exit 0' TERM
touch "$PWD/ready"
sleep 600 & wait`
	os.Remove(filepath.Join(p, "ready"))
	os.Remove(filepath.Join(p, "stopped"))
	bg := startBackground(t, o, "--backend", "vm", "--accel", "tcg", "--no-network", "exec", p, "--", "bash", "-c", script)
	rec := vmRecord(t, bg, p)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(p, "ready")); err == nil {
			break
		}
		if bg.exited() || time.Now().After(deadline) {
			t.Fatalf("the guest command did not start (exit %d):\n%s", bg.status, bg.out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if net, _ := os.ReadFile(filepath.Join(p, "net.txt")); strings.TrimSpace(string(net)) != "lo" {
		t.Errorf("--no-network guest has interfaces %q, want only lo", net)
	}

	r := run(t, o, "enter", p, "--", "sh", "-c", `echo "entered $PWD"; exit 5`)
	if r.code != 5 || !strings.Contains(r.stdout, "entered "+p) {
		t.Errorf("enter: %s", r)
	}
	// ps lists it with QEMU's state, asked over QMP.
	r = run(t, o, "ps", "--json")
	var listed []struct {
		Backend string `json:"backend"`
		PID     int    `json:"pid"`
		Status  string `json:"status"`
	}
	json.Unmarshal([]byte(r.stdout), &listed)
	found := false
	for _, e := range listed {
		if e.Backend == "vm" && e.PID == rec.PID {
			found = true
			if !strings.HasPrefix(e.Status, "running, ") {
				t.Errorf("ps shows the VM's status as %q, want running", e.Status)
			}
		}
	}
	if !found {
		t.Errorf("ps does not list the VM (pid %d): %s", rec.PID, r)
	}

	r = run(t, o, "stop", p)
	if r.code != 0 {
		t.Errorf("stop: %s", r)
	}
	code := bg.wait(t, time.Minute)
	if data, err := os.ReadFile(filepath.Join(p, "stopped")); err != nil || string(data) != "graceful\n" {
		t.Errorf("the command's SIGTERM handler did not run (stop was not graceful): %v; output:\n%s", err, bg.out)
	}
	if code != 0 {
		t.Errorf("after a graceful stop the launch ended with %d (the handler exits 0):\n%s", code, bg.out)
	}
	if _, err := os.Stat(rec.QMP); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("QMP socket %s left after stop: %v", rec.QMP, err)
	}
}

// TestVMAccelKVM: where a guest runs under KVM, --accel kvm (and auto)
// boot with it; where /dev/kvm is missing or refused, --accel kvm says so
// and names --accel tcg at once (auto is TCG there, which the other tests
// boot); where it opens but no guest runs (broken nested KVM), both kvm and
// auto end with the same exit and hint instead of hanging.
func TestVMAccelKVM(t *testing.T) {
	requireVMHost(t)
	kvm := probeKVM(t)
	p := vmProject(t)
	home := vmHome(t)
	accels := []string{"kvm"}
	if kvm.kind == kvmWorks || kvm.kind == kvmNoProgress {
		accels = append(accels, "auto")
	}
	for _, accel := range accels {
		start := time.Now()
		r := run(t, vmOpts(home), "--backend", "vm", "--accel", accel, "exec", p, "--", "true")
		t.Logf("--accel %s: exit %d after %s: %s", accel, r.code, time.Since(start).Round(time.Millisecond), strings.TrimSpace(r.stderr))
		if kvm.kind == kvmWorks {
			if r.code != 0 {
				t.Errorf("--accel %s on a machine where KVM works: %s", accel, r)
			}
			continue
		}
		if r.code != 78 || !strings.Contains(r.stderr, "--accel tcg") {
			t.Errorf("--accel %s on a machine with %s: want exit 78 naming --accel tcg: %s", accel, kvm, r)
		}
	}
}

// TestVMEntryNameAndDryRun: the original's command name still selects the
// vm backend, and --dry-run prints QEMU's command line, with nothing secret.
func TestVMEntryNameAndDryRun(t *testing.T) {
	requireVMHost(t)
	alias := filepath.Join(t.TempDir(), "claude-sandbox-vm")
	if err := os.Symlink(binary, alias); err != nil {
		t.Fatal(err)
	}
	p := project(t)
	cmd := exec.Command(alias, "--accel", "tcg", "--dry-run", "exec", p, "--", "true")
	cmd.Env = baseEnv(runOpts{env: []string{"ANTHROPIC_API_KEY=sk-dry-run-probe"}})
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("claude-sandbox-vm --dry-run: %v\n%s", err, out)
	}
	var inv struct {
		Path string   `json:"path"`
		Args []string `json:"args"`
	}
	if err := json.Unmarshal(out, &inv); err != nil || !strings.Contains(filepath.Base(inv.Path), "qemu-system") {
		t.Fatalf("claude-sandbox-vm did not plan a VM: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "sk-dry-run-probe") {
		t.Errorf("the API key is in the planned invocation:\n%s", out)
	}
}
