package tests

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// kvmKind is what this machine offers a VM, as this file's own probe finds
// it (independent of doctor's and launch's code). Tests that depend on KVM
// take their expectation from it, never from a constant: the machines the
// suite runs on differ in exactly this.
type kvmKind int

const (
	kvmMissing    kvmKind = iota // no /dev/kvm at all (a VM without nested virtualisation)
	kvmUnusable                  // /dev/kvm exists, this user cannot open it
	kvmNoProgress                // it opens, but a guest does not run (broken nested KVM)
	kvmWorks                     // a guest kernel prints its banner under KVM
)

func (k kvmKind) String() string {
	return [...]string{"no /dev/kvm", "/dev/kvm not openable", "/dev/kvm opens but no guest runs", "KVM works"}[k]
}

type kvmProbe struct {
	kind kvmKind
	why  string
	err  error // the open error for kvmUnusable
}

var (
	kvmOnce   sync.Once
	kvmResult kvmProbe
)

// probeKVM classifies this machine once per run: the boot takes up to 20 s
// where nested KVM spins.
func probeKVM(t *testing.T) kvmProbe {
	t.Helper()
	kvmOnce.Do(func() { kvmResult = probeKVMNow(t) })
	t.Logf("this machine: %s (%s)", kvmResult.kind, kvmResult.why)
	return kvmResult
}

func probeKVMNow(t *testing.T) kvmProbe {
	if _, err := os.Stat("/dev/kvm"); errors.Is(err, fs.ErrNotExist) {
		return kvmProbe{kind: kvmMissing, why: err.Error()}
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return kvmProbe{kind: kvmUnusable, why: err.Error(), err: err}
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
	// -cpu host: the CPU model the vm backend asks KVM for.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, qemu, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256",
		"-nodefaults", "-display", "none", "-monitor", "none", "-nic", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1").CombinedOutput()
	switch {
	case strings.Contains(string(out), "Linux version"):
		return kvmProbe{kind: kvmWorks, why: "a kernel printed its banner under KVM"}
	case ctx.Err() != nil:
		return kvmProbe{kind: kvmNoProgress, why: "no kernel output under KVM in 20 s"}
	}
	return kvmProbe{kind: kvmNoProgress, why: "QEMU: " + strings.TrimSpace(lastLines(string(out), 2))}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// wantKVMCheck asserts doctor's KVM line for a machine of kind k: ✓ only
// where a guest runs; a missing device is a warning (the vm backend emulates
// the CPU by itself); a device that does not open or runs no guest is ✗ and
// names --accel tcg, which the user has to pass there, and a refused open
// names the kvm group.
func wantKVMCheck(t *testing.T, k kvmProbe, c doctorCheck) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("on a machine with %s (%s): "+format, append([]any{k.kind, k.why}, args...)...)
	}
	switch k.kind {
	case kvmWorks:
		if c.Status != "ok" {
			fail("doctor says %s: %s", c.Status, c.Detail)
		}
	case kvmMissing:
		if c.Status != "warn" || !strings.Contains(c.Detail, "no /dev/kvm") || !strings.Contains(c.Detail, "TCG") {
			fail("want a warning that names the missing /dev/kvm and TCG: %+v", c)
		}
	case kvmUnusable:
		if c.Status != "fail" || !strings.Contains(c.Detail, "cannot be used") || !strings.Contains(c.Fix, "--accel tcg") {
			fail("want ✗ saying /dev/kvm cannot be used, with a fix naming --accel tcg: %+v", c)
		}
		if errors.Is(k.err, fs.ErrPermission) && !strings.Contains(c.Fix, "kvm group") {
			fail("the open was refused, but the fix does not name the kvm group: %+v", c)
		}
	case kvmNoProgress:
		if c.Status != "fail" || !strings.Contains(c.Fix, "--accel tcg") {
			fail("want ✗ with a fix naming --accel tcg: %+v", c)
		}
	}
}

// kvmTextLine is doctor's text line for KVM.
func kvmTextLine(text string) string {
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, " KVM: ") {
			return line
		}
	}
	return ""
}

func kvmSymbol(k kvmKind) string {
	return map[kvmKind]string{kvmWorks: "✓", kvmMissing: "!", kvmUnusable: "✗", kvmNoProgress: "✗"}[k]
}

func (k kvmProbe) String() string { return fmt.Sprintf("%s (%s)", k.kind, k.why) }
