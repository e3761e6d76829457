package tests

import (
	"context"
	"encoding/json"
	"io/fs"
	"os/exec"
	"path/filepath"
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

// TestDoctorOnThisMachine runs doctor for real: what it reports must match
// what this machine does, KVM included (whichever of the four kinds of
// machine this is: see kvmKind), and it exits 0 because the default
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

	// KVM: the expectation comes from this test's own probe of the machine.
	kvm := probeKVM(t)
	wantKVMCheck(t, kvm, rep.get(t, "kvm"))

	// The text a person reads: ✓ only where it works.
	text := run(t, o, "doctor")
	if text.code != 0 {
		t.Fatalf("doctor: %s", text)
	}
	if line := kvmTextLine(text.stdout); !strings.HasPrefix(line, kvmSymbol(kvm.kind)+" ") {
		t.Errorf("KVM line %q on a machine with %s, want it marked %s", line, kvm, kvmSymbol(kvm.kind))
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

// TestDoctorOnMadeKVMKinds runs doctor where /dev/kvm is made, in a mount
// namespace of its own, to look like the kinds of machine this one is not:
// absent, present but refused (a device node on a nodev mount: EACCES,
// even for root), and present but not KVM (it opens; KVM's first ioctl
// fails). Broken nested KVM and working KVM need real hardware: only
// TestDoctorOnThisMachine meets them, on machines that have them.
func TestDoctorOnMadeKVMKinds(t *testing.T) {
	requireSandboxHost(t)
	bwrap := testenv.RequireProgram(t, "bwrap")
	o := runOpts{env: []string{"XDG_CONFIG_HOME=" + cfgHome(t, "")}}
	for _, made := range []struct {
		name  string
		kvm   []string // bwrap arguments that make /dev/kvm
		probe kvmProbe
	}{
		{"missing", nil, kvmProbe{kind: kvmMissing, why: "made: no /dev/kvm"}},
		{"refused", []string{"--bind", "/dev/null", "/dev/kvm"},
			kvmProbe{kind: kvmUnusable, why: "made: a device on a nodev mount", err: fs.ErrPermission}},
		{"not-kvm", []string{"--dev-bind", "/dev/null", "/dev/kvm"},
			kvmProbe{kind: kvmNoProgress, why: "made: /dev/null at /dev/kvm"}},
	} {
		t.Run(made.name, func(t *testing.T) {
			args := append([]string{"--dev-bind", "/", "/", "--dev", "/dev"}, made.kvm...)
			args = append(args, "--", binary, "doctor", "--json", "--kvm-timeout", "2s")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bwrap, args...)
			cmd.Env = baseEnv(o)
			out, err := cmd.Output()
			var rep doctorReport
			if jerr := json.Unmarshal(out, &rep); jerr != nil {
				t.Fatalf("doctor --json under bwrap: %v, %v\n%s", err, jerr, out)
			}
			c := rep.get(t, "kvm")
			t.Logf("doctor: %s: %s (fix: %s)", c.Status, c.Detail, c.Fix)
			wantKVMCheck(t, made.probe, c)
		})
	}
}
