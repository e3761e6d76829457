package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

type doctorCheck struct {
	ID       string   `json:"id"`
	Title    string   `json:"title"`
	Status   string   `json:"status"`
	Detail   string   `json:"detail"`
	Fix      string   `json:"fix"`
	NeededBy []string `json:"neededBy"`
}

type doctorReport struct {
	DefaultBackend string          `json:"defaultBackend"`
	Backends       map[string]bool `json:"backends"`
	OK             bool            `json:"ok"`
	Checks         []doctorCheck   `json:"checks"`
}

func (r doctorReport) get(t *testing.T, id string) doctorCheck {
	t.Helper()
	for _, c := range r.Checks {
		if c.ID == id {
			return c
		}
	}
	t.Fatalf("doctor has no %q check", id)
	return doctorCheck{}
}

// guestMakesProgress is this test's own KVM probe, independent of
// doctor's code: can this user open /dev/kvm, and does a Linux kernel
// booted under KVM with the vm backend's CPU model print its first line?
func guestMakesProgress(t *testing.T) (bool, string) {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("cannot open /dev/kvm: %v", err)
	}
	f.Close()
	qemu := testenv.RequireProgram(t, "qemu-system-x86_64")
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Strings(kernels)
	var kernel string
	for _, k := range kernels {
		if f, err := os.Open(k); err == nil {
			f.Close()
			kernel = k
		}
	}
	testenv.Require(t, kernel != "", "no readable kernel in /boot to boot under KVM (apt-get install linux-image-amd64)")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, qemu, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256",
		"-nodefaults", "-display", "none", "-monitor", "none", "-nic", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1").CombinedOutput()
	if strings.Contains(string(out), "Linux version") {
		return true, "the kernel printed its banner"
	}
	if ctx.Err() != nil {
		return false, "no kernel output in 20 s"
	}
	return false, "QEMU: " + strings.TrimSpace(lastLines(string(out), 2))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestDoctorOnThisMachine runs doctor for real: what it reports must match
// what this machine does, KVM included (here nested KVM is broken: /dev/kvm
// exists, a guest does not run), and it exits 0 because the default
// backend works.
func TestDoctorOnThisMachine(t *testing.T) {
	requireSandboxHost(t)
	o := runOpts{env: []string{"XDG_CONFIG_HOME=" + cfgHome(t, "")}}
	r := run(t, o, "doctor", "--json")
	if r.code != 0 {
		t.Fatalf("doctor on a machine where bubblewrap works: %s", r)
	}
	var rep doctorReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, r.stdout)
	}
	if !rep.OK || rep.DefaultBackend != "bubblewrap" || !rep.Backends["bubblewrap"] {
		t.Errorf("verdict: %+v", rep)
	}
	for _, id := range []string{"nix", "nix-daemon", "nix-store", "nixpkgs", "userns", "userns-limits", "cache"} {
		if c := rep.get(t, id); c.Status != "ok" {
			t.Errorf("%s: %s (%s), want ok on this machine", id, c.Status, c.Detail)
		}
	}
	if c := rep.get(t, "nixpkgs"); !strings.Contains(c.Detail, fixture) || !strings.Contains(c.Detail, "CLAUDE_SANDBOX_NIXPKGS") {
		t.Errorf("nixpkgs: %q should name the fixture and where it came from", c.Detail)
	}
	if c := rep.get(t, "nix-store"); !strings.Contains(c.Detail, "/nix/store/") {
		t.Errorf("nix-store: %q should name the probe's store path", c.Detail)
	}
	for _, id := range []string{"display", "audio", "dbus", "ssh-agent", "gcroots", "disk", "nspawn", "root", "qemu", "virtiofsd"} {
		rep.get(t, id)
	}

	// KVM: the expectation comes from a real boot, not from a constant.
	progress, why := guestMakesProgress(t)
	kvm := rep.get(t, "kvm")
	t.Logf("this machine: guest progress under KVM = %v (%s); doctor: %s: %s", progress, why, kvm.Status, kvm.Detail)
	if progress && kvm.Status != "ok" {
		t.Errorf("a guest runs under KVM here, but doctor says %s: %s", kvm.Status, kvm.Detail)
	}
	if !progress {
		if kvm.Status == "ok" {
			t.Errorf("no guest makes progress under KVM here (%s), but doctor says ok: %s", why, kvm.Detail)
		}
		if kvm.Fix == "" || !strings.Contains(kvm.Fix, "tcg") {
			t.Errorf("the KVM line gives no fix pointing at TCG: %+v", kvm)
		}
	}

	// The text a person reads: ✓ only where it works.
	text := run(t, o, "doctor")
	if text.code != 0 {
		t.Fatalf("doctor: %s", text)
	}
	var kvmLine string
	for _, line := range strings.Split(text.stdout, "\n") {
		if strings.Contains(line, " KVM: ") {
			kvmLine = line
		}
	}
	if progress != strings.HasPrefix(kvmLine, "✓") {
		t.Errorf("KVM line %q, but a guest makes progress = %v", kvmLine, progress)
	}
	if !strings.Contains(text.stdout, "✓ Nix daemon:") || !strings.Contains(text.stdout, "* bubblewrap") {
		t.Errorf("doctor text:\n%s", text.stdout)
	}
}

// TestDoctorFailsWhenTheDefaultBackendCannotRun: a nixpkgs that does not
// resolve makes every backend unable to build: exit 1, and the line says
// what to do.
func TestDoctorFailsWhenTheDefaultBackendCannotRun(t *testing.T) {
	requireSandboxHost(t)
	o := runOpts{env: []string{"XDG_CONFIG_HOME=" + cfgHome(t, "")}}
	r := run(t, o, "doctor", "--kvm-timeout", "1s", "--nixpkgs", filepath.Join(t.TempDir(), "no-such-nixpkgs"))
	if r.code != 1 {
		t.Fatalf("doctor with a missing nixpkgs: want exit 1, got %s", r)
	}
	if !strings.Contains(r.stdout, "✗ nixpkgs:") || !strings.Contains(r.stdout, "fix: pass --nixpkgs") {
		t.Errorf("no ✗ nixpkgs line with a fix:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "the default backend (bubblewrap) cannot run") {
		t.Errorf("stderr: %s", r.stderr)
	}
	// The user's configuration picks the default backend doctor judges.
	o = runOpts{env: []string{"XDG_CONFIG_HOME=" + cfgHome(t, "backend = \"vm\"\n")}}
	r = run(t, o, "doctor", "--json", "--kvm-timeout", "1s")
	var rep doctorReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || rep.DefaultBackend != "vm" {
		t.Errorf("backend = \"vm\" in the user config: %v %s", err, r)
	}
}
