package launch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// File names inside a VM's run directory (<state>/vm/<id>/). QEMU runs with
// the run directory as its working directory and is given these relative
// names, so socket paths stay short whatever the state directory's length.
const (
	vmMetaDir     = "meta"
	vmEmptyDir    = "empty"
	vmQMPSock     = "qmp.sock"
	vmConsoleSock = "console.sock"
	vmVirtiofsd   = "virtiofsd.sock"
	vmBootLog     = "boot.log"
	vmQEMULog     = "qemu.log"
	vmLock        = "lock"
)

// vmPlan is a decided VM start: the QEMU command line and what the host
// side must prepare for it.
type vmPlan struct {
	ID       string
	RunDir   string
	StateDir string
	QEMU     string
	Args     []string // argv, Args[0] included
	Accel    string
	AutoKVM  bool              // KVM chosen by --accel auto
	Sources  map[string]string // share source → host directory
	Present  map[string]bool   // share source → the host has it (not the empty stand-in)
	FS       string
	VFSTag   string // virtiofs tag of the project, when FS is virtiofs
	Virtiofs string // virtiofsd binary, when FS is virtiofs
	Display  vmDisplay
	Warning  string // one line for the user: the window that could not be opened
}

// vmDisplay is how the guest is shown: UI is QEMU's -display backend ("gtk"
// or "sdl") with a virtio GPU, or "" for no window at all. Env is what QEMU
// needs of the host's environment to reach the display.
type vmDisplay struct {
	UI  string
	Env []string
}

// qemuDisplayUIs lists the -display backends a QEMU binary can open; tests
// replace it. Debian ships gtk and sdl as modules in qemu-system-gui, so
// asking QEMU is the only check that holds for every packaging.
var qemuDisplayUIs = func(qemu string) map[string]bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-display", "help")
	cmd.Env = qemuEnv()
	out, _ := cmd.Output()
	uis := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 1 {
			uis[f[0]] = true
		}
	}
	return uis
}

// chooseDisplay opens a window only where the host has a display whose
// socket exists (a stale DISPLAY would make QEMU fail to start) and the
// user did not turn it off. A QEMU without a window backend still runs the
// guest, without a window, and says so once.
func chooseDisplay(h hostView, rt *Runtime, qemu string) (d vmDisplay, warning string) {
	if rt.NoDisplay || rt.NoDesktop {
		return vmDisplay{}, ""
	}
	var env []string
	if display := h.env("DISPLAY"); display != "" {
		if n, local := x11Display(display); local && h.isSocket("/tmp/.X11-unix/X"+n) {
			env = append(env, "DISPLAY="+display)
			if xauth := h.env("XAUTHORITY"); filepath.IsAbs(xauth) {
				env = append(env, "XAUTHORITY="+xauth)
			} else if filepath.IsAbs(rt.Home) {
				// Xlib's own default, spelled out: QEMU's environment is
				// built from nothing.
				env = append(env, "XAUTHORITY="+filepath.Join(rt.Home, ".Xauthority"))
			}
		}
	}
	if wl := h.env("WAYLAND_DISPLAY"); wl != "" {
		run := h.runtimeDir()
		sock := wl
		if !filepath.IsAbs(sock) && run != "" {
			sock = filepath.Join(run, wl)
		}
		if filepath.IsAbs(sock) && h.isSocket(sock) {
			env = append(env, "WAYLAND_DISPLAY="+wl)
			if run != "" {
				env = append(env, "XDG_RUNTIME_DIR="+run)
			}
		}
	}
	if len(env) == 0 {
		return vmDisplay{}, ""
	}
	uis := qemuDisplayUIs(qemu)
	for _, ui := range []string{"gtk", "sdl"} {
		if uis[ui] {
			return vmDisplay{UI: ui, Env: env}, ""
		}
	}
	return vmDisplay{}, "this QEMU has no window (gtk or sdl) backend: the VM runs without a display (Debian: apt install qemu-system-gui; --no-display silences this)"
}

// qemuBinary names the system emulator: nixpkgs' from the manifest, else
// the host's.
func qemuBinary(m *manifest.Manifest) (string, error) {
	if m.VM.QEMU != "" {
		return m.VM.QEMU, nil
	}
	name := "qemu-system-" + qemuArch()
	p, err := exec.LookPath(name)
	if err != nil {
		return "", &VMStartError{Reason: name + " is not installed", hint: "install QEMU (Debian: apt install qemu-system-x86), or build with a nixpkgs that has qemu_kvm"}
	}
	return p, nil
}

// virtiofsdBinary finds virtiofsd: nixpkgs' from the manifest, else the
// host's (on PATH, or where Debian and Fedora install it).
func virtiofsdBinary(m *manifest.Manifest) (string, error) {
	if m.VM.Virtiofsd != "" {
		return m.VM.Virtiofsd, nil
	}
	if p, err := exec.LookPath("virtiofsd"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &VMStartError{Reason: "--fs virtiofs: virtiofsd is not installed", hint: "install it (Debian: qemu-system-common ships /usr/lib/qemu/virtiofsd), or use --fs 9p"}
}

// qemuArch is the QEMU name of this machine's architecture.
func qemuArch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return runtime.GOARCH
}

// qemuOpt escapes a value for QEMU's comma-separated option syntax, where a
// literal comma is written twice. A project path is the user's text.
func qemuOpt(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// hostShares decides which host directory backs each share the guest
// declares. Optional ones the host lacks get an empty stand-in, because the
// guest's fstab mounts every declared share at boot.
func hostShares(m *manifest.Manifest, rt *Runtime, stateDir, runDir string) (sources map[string]string, present map[string]bool) {
	empty := filepath.Join(runDir, vmEmptyDir)
	sources, present = map[string]string{}, map[string]bool{}
	dirIf := func(p string) (string, bool) {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return empty, false
		}
		if st, err := os.Stat(real); err != nil || !st.IsDir() {
			return empty, false
		}
		return real, true
	}
	for _, s := range m.VM.Shares {
		var p string
		ok := true
		switch s.Source {
		case "store":
			p = manifest.StoreDir
		case "meta":
			p = filepath.Join(runDir, vmMetaDir)
		case "project":
			p = rt.Project
		case "claude":
			p, ok = dirIf(filepath.Join(rt.Home, ".claude"))
		case "state":
			p = filepath.Join(stateDir, "guest")
		case "ssh":
			p, ok = dirIf(filepath.Join(rt.Home, ".ssh"))
		case "git":
			p, ok = dirIf(filepath.Join(rt.Home, ".config", "git"))
		case "gh":
			p, ok = dirIf(filepath.Join(rt.Home, ".config", "gh"))
		}
		sources[s.Source], present[s.Source] = p, ok
	}
	return sources, present
}

// qemuArgs builds QEMU's command line. Nothing secret is on it: the
// command, its environment and the API key travel in the metadata share.
func qemuArgs(m *manifest.Manifest, p *vmPlan, network bool) []string {
	vm := m.VM
	machine, cpu := "q35,accel=tcg", "max"
	if p.Accel == AccelKVM {
		machine, cpu = "q35,accel=kvm", "host"
	}
	a := []string{p.QEMU,
		"-name", "claude-sandbox,process=claude-sandbox-vm",
		"-nodefaults", "-no-user-config",
		"-machine", machine, "-cpu", cpu,
		"-m", strconv.Itoa(vm.MemoryMiB), "-smp", strconv.Itoa(vm.Cores),
		// A guest reboot (or a panic, with panic=-1) ends the VM instead of
		// looping through another boot.
		"-no-reboot",
		"-kernel", vm.Kernel, "-initrd", vm.Initrd,
		"-append", strings.Join(vm.KernelParams, " "),
		// ttyS0: the guest console and the command's terminal, relayed by
		// the supervisor through QEMU's stdin and stdout.
		"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
		// ttyS1: the second console, for `enter`.
		"-chardev", "socket,id=enter,path=" + vmConsoleSock + ",server=on,wait=off", "-serial", "chardev:enter",
		"-chardev", "socket,id=qmp,path=" + vmQMPSock + ",server=on,wait=off", "-mon", "chardev=qmp,mode=control",
		"-device", "virtio-rng-pci",
	}
	if p.Display.UI != "" {
		// A window for the guest's own display (Chromium's kiosk in the
		// NixOS guest); the serial consoles stay where they are.
		a = append(a, "-display", p.Display.UI, "-device", "virtio-vga")
	} else {
		a = append(a, "-display", "none")
	}
	if network {
		// User-mode NAT: the guest reaches what the host reaches, and
		// nothing on the host's networks can reach the guest.
		a = append(a, "-nic", "user,model=virtio-net-pci")
	} else {
		a = append(a, "-nic", "none")
	}
	for i, s := range vm.Shares {
		id := "fs" + strconv.Itoa(i)
		fsdev := "local,id=" + id + ",path=" + qemuOpt(p.Sources[s.Source]) + ",security_model=none,multidevs=remap"
		if s.ReadOnly {
			fsdev += ",readonly=on"
		}
		a = append(a, "-fsdev", fsdev, "-device", "virtio-9p-pci,fsdev="+id+",mount_tag="+s.Tag)
	}
	if p.FS == FSVirtiofs {
		// vhost-user needs the guest's memory shared with virtiofsd.
		a = append(a,
			"-object", "memory-backend-memfd,id=mem,size="+strconv.Itoa(vm.MemoryMiB)+"M,share=on",
			"-numa", "node,memdev=mem",
			"-chardev", "socket,id=vfs,path="+vmVirtiofsd,
			"-device", "vhost-user-fs-pci,chardev=vfs,tag="+p.VFSTag)
	}
	return a
}

// planVMRun decides everything about a start without touching the host
// beyond the project's state directory.
func planVMRun(m *manifest.Manifest, rt *Runtime) (*vmPlan, error) {
	if m.VM == nil {
		return nil, errors.New("vm backend without a vm section in the manifest")
	}
	if m.VM.Network != rt.Network {
		return nil, &VMStartError{
			Reason: fmt.Sprintf("this guest was built with network=%t, the run asks for network=%t", m.VM.Network, rt.Network),
			hint:   "the vm backend builds the network into the guest: rebuild with the same --no-network setting",
		}
	}
	fs := rt.FS
	if fs == "" {
		fs = FS9p
	}
	if fs != FS9p && fs != FSVirtiofs {
		return nil, &VMOptionError{Flag: "--fs", Value: fs, Want: "9p or virtiofs"}
	}
	accel, auto, err := chooseAccel(rt.Accel)
	if err != nil {
		return nil, err
	}
	qemu, err := qemuBinary(m)
	if err != nil {
		return nil, err
	}
	stateDir := rt.StateDir
	if stateDir == "" {
		if stateDir, err = ProjectStateDir(rt.Project); err != nil {
			return nil, err
		}
	}
	// The run directory is named after the registry entry, so a sweep never
	// takes the directory of a VM that is registered.
	id := NewRecordID()
	if rt.Record != nil && rt.Record.ID != "" {
		id = rt.Record.ID
	}
	p := &vmPlan{
		ID: id, StateDir: stateDir, RunDir: filepath.Join(stateDir, "vm", id),
		QEMU: qemu, Accel: accel, AutoKVM: auto && accel == AccelKVM, FS: fs,
	}
	if fs == FSVirtiofs {
		if p.Virtiofs, err = virtiofsdBinary(m); err != nil {
			return nil, err
		}
		share, _ := m.VM.Share("project")
		p.VFSTag = share.Tag + "-vfs"
	}
	p.Sources, p.Present = hostShares(m, rt, stateDir, p.RunDir)
	p.Display, p.Warning = chooseDisplay(osHost(rt), rt, qemu)
	p.Args = qemuArgs(m, p, rt.Network)
	return p, nil
}

// VMStartError: the VM could not be started, or stopped before the
// command ran.
type VMStartError struct {
	Reason string
	Log    string // where the guest's boot output was kept
	hint   string
}

func (e *VMStartError) Error() string { return "the VM could not start: " + e.Reason }
func (e *VMStartError) Hint() string {
	if e.hint != "" {
		return e.hint
	}
	if e.Log != "" {
		return "the guest's boot output is in " + e.Log + "; --dry-run prints QEMU's command line"
	}
	return "--dry-run prints QEMU's command line"
}
