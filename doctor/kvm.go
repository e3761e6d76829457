package doctor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
	"github.com/claude-sandbox/claude-sandbox/launch"

	launchbackends "github.com/claude-sandbox/claude-sandbox/launch/backends"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/vmhost"
)

// kernelLine is a kernel log line ("[    0.000000] Linux version …"): the
// proof that a guest really runs. Nested KVM can accept the VM and then
// fail on the first privileged MSR, or spin without ever printing.
var kernelLine = lazyregexp.New(`\[\s*\d+\.\d{6}\]`)

// findQEMU finds the QEMU a launch would run: a cached vm closure's, else
// the host's.
func findQEMU(env *Env) (path, from string) {
	m, _ := cachedManifest(env, "vm")
	p, err := launch.FindQEMU(m)
	switch {
	case err != nil:
		return "", ""
	case m != nil && m.VM != nil && p == m.VM.QEMU:
		return p, "the cached vm sandbox's"
	}
	return p, "the host's"
}

// findKernel prefers the guest kernel of a cached vm closure, else the
// host's own (any Linux kernel proves whether a guest makes progress).
func findKernel(env *Env) (path, from string) {
	if m, _ := cachedManifest(env, "vm"); m != nil && m.VM != nil && m.VM.Kernel != "" {
		return m.VM.Kernel, "the cached vm sandbox's kernel"
	}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		p := "/boot/vmlinuz-" + unix.ByteSliceToString(uts.Release[:])
		if readable(p) {
			return p, "the host's kernel"
		}
	}
	matches, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Sort(sort.Reverse(sort.StringSlice(matches)))
	for _, p := range matches {
		if readable(p) {
			return p, "a host kernel"
		}
	}
	return "", ""
}

func readable(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

func checkKVM(ctx context.Context, env *Env) Check {
	c := Check{ID: "kvm", Title: "KVM"}
	switch err := launch.KVMUsable(); {
	case errors.Is(err, os.ErrNotExist):
		c.Status = Warn
		c.Detail = "no " + launch.KVMDevice() + ": the vm backend emulates the CPU (TCG), several times slower"
		c.Fix = "enable virtualisation in the firmware and load kvm_intel or kvm_amd; in a VM, enable nested virtualisation"
		return c
	case err != nil:
		c.Status = Fail
		c.Detail = fmt.Sprintf("%s exists but cannot be used: %v", launch.KVMDevice(), rootCause(err))
		c.Fix = "join the kvm group (sudo usermod -aG kvm $USER, then log in again); until then the vm backend needs --accel tcg"
		if !errors.Is(err, os.ErrPermission) {
			c.Fix = "check that the kvm module is loaded; until then use --accel tcg"
		}
		return c
	}
	qemu, _ := findQEMU(env)
	kernel, kernelFrom := findKernel(env)
	if qemu == "" || kernel == "" {
		what := "QEMU"
		if qemu != "" {
			what = "a kernel to boot"
		}
		c.Status = Warn
		c.Detail = fmt.Sprintf("%s opens, but whether a guest makes progress was not tried (no %s)", launch.KVMDevice(), what)
		c.Fix = "build the vm backend once (claude-sandbox build --backend vm), then run doctor again"
		return c
	}
	took, err := bootProbe(ctx, env, qemu, kernel, env.KVMTimeout)
	if err != nil {
		c.Status = Fail
		c.Detail = fmt.Sprintf("%s opens, but a guest makes no progress under KVM: %v; the vm backend needs --accel tcg here", launch.KVMDevice(), err)
		c.Fix = `use --accel tcg (or accel = "tcg" in ~/.config/claude-sandbox/config.toml); under nested virtualisation, enable nested KVM on the outer host`
		return c
	}
	c.Status = OK
	c.Detail = fmt.Sprintf("a guest boots under KVM (%s printed its first line after %.1f s)", kernelFrom, took.Seconds())
	return c
}

// bootProbe boots kernel under KVM with the CPU model the vm backend uses
// and waits for its first log line on the serial console.
func bootProbe(ctx context.Context, env *Env, qemu, kernel string, timeout time.Duration) (time.Duration, error) {
	arch := launch.ArchOfSystem(env.System)
	machine, console := arch.Machine, arch.Console
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-machine", machine+",accel=kvm", "-cpu", "host", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-nic", "none",
		"-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-append", "console="+console+" earlyprintk="+console+" panic=-1")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	progress := make(chan time.Duration, 1)
	start := time.Now()
	cmd.Stdout = &lineWatcher{match: kernelLine, found: func() { progress <- time.Since(start) }}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting QEMU: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case took := <-progress:
		cancel()
		<-exited
		return took, nil
	case err := <-exited:
		select { // the line may have come just before QEMU exited
		case took := <-progress:
			return took, nil
		default:
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("no kernel output within %s (the guest spins)", timeout)
		}
		msg := qemuError(stderr.String())
		if msg == "" {
			msg = fmt.Sprint(err)
		}
		return 0, fmt.Errorf("QEMU failed: %s", msg)
	}
}

// lineWatcher calls found once, for the first output line matching match.
// It is QEMU's stdout itself (not a pipe read by a goroutine), so Wait
// returns only after every byte was seen.
type lineWatcher struct {
	match   *lazyregexp.Regexp
	found   func()
	partial []byte
	done    bool
}

func (w *lineWatcher) Write(p []byte) (int, error) {
	if w.done {
		return len(p), nil
	}
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		line := w.partial
		if i >= 0 {
			line = w.partial[:i]
		}
		if w.match.Match(line) {
			w.done, w.partial = true, nil
			w.found()
			return len(p), nil
		}
		if i < 0 {
			if len(w.partial) > 64<<10 { // no newline for this long: keep the tail
				w.partial = w.partial[len(w.partial)-4096:]
			}
			return len(p), nil
		}
		w.partial = w.partial[i+1:]
	}
}

// qemuError picks QEMU's own error line, skipping its warnings.
func qemuError(stderr string) string {
	var fallback string
	for _, line := range strings.Split(stderr, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		rest := line
		if i := strings.Index(line, ": "); i > 0 && strings.HasPrefix(line, "qemu-system-") {
			rest = line[i+2:]
		}
		if strings.HasPrefix(rest, "warning:") {
			continue
		}
		if strings.HasPrefix(rest, "error: ") {
			return strings.TrimPrefix(rest, "error: ")
		}
		if fallback == "" {
			fallback = rest
		}
	}
	return fallback
}

func checkQEMU(ctx context.Context, env *Env) Check {
	c := Check{ID: "qemu", Title: "QEMU"}
	p, from := findQEMU(env)
	if p == "" {
		c.Status = Warn
		c.Detail = "qemu-system-" + launch.ArchOfSystem(env.System).QEMU + " not found: the vm backend uses the QEMU its closure brings from nixpkgs (qemu_kvm), or the host's"
		c.Fix = "nothing to do with a real nixpkgs; otherwise install QEMU (Debian: apt-get install qemu-system-x86)"
		return c
	}
	out, _, err := runProgram(ctx, 10*time.Second, nil, p, "--version")
	if err != nil {
		c.Status, c.NeededBy = Fail, []string{"vm"}
		c.Detail = fmt.Sprintf("%s QEMU (%s) does not run: %v", from, p, err)
		c.Fix = "reinstall QEMU, or rebuild the vm sandbox with --rebuild"
		return c
	}
	c.Status = OK
	c.Detail = fmt.Sprintf("%s (%s; TCG emulation works without KVM)", strings.SplitN(out, "\n", 2)[0], p)
	return c
}

func checkVirtiofsd(_ context.Context, env *Env) Check {
	c := Check{ID: "virtiofsd", Title: "virtiofsd"}
	m, _ := cachedManifest(env, "vm")
	if p, err := launch.FindVirtiofsd(m); err == nil {
		c.Status, c.Detail = OK, p
		if m != nil && m.VM != nil && p == m.VM.Virtiofsd {
			c.Detail += " (the cached vm sandbox's)"
		}
		return c
	}
	c.Status = Warn
	c.Detail = "not found: the vm backend shares the project over 9p (--fs 9p), slower for many small files"
	c.Fix = "install virtiofsd (Debian: apt-get install virtiofsd, or qemu-system-common on Debian 12) for --fs virtiofs"
	return c
}

// checkGuestStores reports the space the vm backend's guest Nix stores
// take on the host (one per project, kept between runs), and how to throw
// one away.
func checkGuestStores(_ context.Context, _ *Env) Check {
	c := Check{ID: "guest-stores", Title: "VM guests' Nix stores", Status: OK}
	lines, total, err := launchbackends.GuestStores()
	switch {
	case err != nil:
		c.Status, c.Detail = Warn, "could not be listed: "+err.Error()
	case len(lines) == 0:
		c.Detail = "none yet (a VM's Nix store is made at its first start)"
	default:
		c.Detail = fmt.Sprintf("%s in all: %s", vmhost.HumanSize(total), strings.Join(lines, "; "))
		c.Fix = "claude-sandbox stop --reset-store PROJECT throws one away"
	}
	return c
}
