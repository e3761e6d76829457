package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/agent"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/vmhost"
	"github.com/claude-sandbox/claude-sandbox/manifest"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// File names inside a VM's run directory (launch.RunDir). QEMU runs with
// the run directory as its working directory and is given these relative
// names, so socket paths stay short whatever the state directory's length.
const (
	vmMetaDir  = "meta"
	vmEmptyDir = "empty"
	// A second VM of a project (--new) gets a store of its own for its
	// life: the project's is the first one's.
	vmTempStore = "nix-store.img"
)

// Guest-side addresses of the supervisor's doors.
const (
	// ProxyAddr is where the egress proxy is offered inside the guest:
	// where every backend's sandbox finds it (launch.ProxyEnv).
	ProxyAddr = "127.0.0.1:3128"
)

// storeMiB is the guest Nix store disk's size: sparse, so this is a
// ceiling, not what it takes.
const storeMiB = 64 << 10

// vmPlan is a decided VM start (the launch plan's Detail): the QEMU
// command line and what the host side must prepare for it.
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
	Shares   []launch.Mount    // the manifest's shares as mounts, in its order (Tag set)
	FS       string
	VFSTag   string // virtiofs tag of the project, when FS is virtiofs
	Virtiofs string // virtiofsd binary, when FS is virtiofs
	Display  vmDisplay
	Warning  string // one line for the user: the window that could not be opened

	// The guest's Nix store disk: the project's (StoreLock held while a
	// VM uses it), or a temporary one in the run directory.
	Store     string
	StoreLock string
	Mkfs      string

	// The supervisor's doors inside: the egress proxy (Network; Egress
	// its mode and rules, the launch's own), the host's SSH agent,
	// filtered (SSHAgent is the host's socket).
	Network  bool
	Egress   *launch.Egress
	SSHAgent string

	// Secrets stay outside (the core's plan resolved them): Trust says the
	// supervisor writes the CA's trust files into the metadata share,
	// Login are the guest paths of Claude Code's credentials file the
	// guest agent hides under the placeholder copy, ClaudeJSON replaces
	// the copy of ~/.claude.json (the approval of the API key carried over
	// to its placeholder), and secretServices completes the supervisor's
	// spec (the broker, the SSH agent's keys).
	Trust          bool
	Login          []string
	ClaudeJSON     []byte
	secretServices func(*control.Spec)

	// Protected are mounts inside the shared directories the guest makes
	// read-only (or mount points), Prepare what the host must have first.
	Protected []launch.Mount
	Prepare   []launch.HostDir
	// ProtectedList is what is protected, for the launch's plan (--dry-run,
	// the session notice).
	ProtectedList []launch.Protected
	// guestProtect is Protected on the guest's paths, for the agent.
	guestProtect []agent.Protect

	// Who the command runs as in the guest, and what the metadata share
	// carries beside the command and its environment.
	Project   string
	HostHome  string // where the host's ~/.claude.json, ~/.gitconfig and ~/.ssh are copied from
	Shell     string
	UsrBinEnv string
	User      string
	UID, GID  int
	Home      string
}

// extraEnv is what the guest's doors add to the sandbox's environment.
func (p *vmPlan) extraEnv() map[string]string {
	env := map[string]string{}
	for k, v := range launch.ProxyEnv(p.Egress) {
		env[k] = v
	}
	if p.SSHAgent != "" {
		env["SSH_AUTH_SOCK"] = sshAgentInside(p.UID)
	}
	return env
}

// sshAgentInside is where the filtered SSH agent is offered in the guest.
func sshAgentInside(uid int) string { return launch.RuntimeDirInside(uid) + "/ssh-agent" }

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
func chooseDisplay(h launch.Host, rt *launch.Runtime, qemu string) (d vmDisplay, warning string) {
	if rt.NoDisplay || rt.NoDesktop {
		return vmDisplay{}, ""
	}
	var env []string
	if display := h.Env("DISPLAY"); display != "" {
		if n, local := launch.X11Display(display); local && h.IsSocket("/tmp/.X11-unix/X"+n) {
			env = append(env, "DISPLAY="+display)
			if xauth := h.Env("XAUTHORITY"); filepath.IsAbs(xauth) {
				env = append(env, "XAUTHORITY="+xauth)
			} else if filepath.IsAbs(rt.Home) {
				// Xlib's own default, spelled out: QEMU's environment is
				// built from nothing.
				env = append(env, "XAUTHORITY="+filepath.Join(rt.Home, ".Xauthority"))
			}
		}
	}
	if wl := h.Env("WAYLAND_DISPLAY"); wl != "" {
		run := h.RuntimeDir()
		sock := wl
		if !filepath.IsAbs(sock) && run != "" {
			sock = filepath.Join(run, wl)
		}
		if filepath.IsAbs(sock) && h.IsSocket(sock) {
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

// qemuOpt escapes a value for QEMU's comma-separated option syntax, where a
// literal comma is written twice. A project path is the user's text.
func qemuOpt(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// hostShares decides which host directory backs each share the guest
// declares. Optional ones the host lacks get an empty stand-in, because the
// guest's fstab mounts every declared share at boot.
func hostShares(m *manifest.Manifest, rt *launch.Runtime, stateDir, runDir string) (sources map[string]string, present map[string]bool) {
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
			p = filepath.Join(stateDir, launch.StateGuest)
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
// sandbox's environment travels in the metadata share.
func qemuArgs(m *manifest.Manifest, p *vmPlan) []string {
	vm := m.VM
	machine, cpu := launch.HostArch().Machine+",accel=tcg", "max"
	if p.Accel == launch.AccelKVM {
		machine, cpu = launch.HostArch().Machine+",accel=kvm", "host"
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
		// ttyS0: the boot log, kept by the supervisor.
		"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
		"-chardev", "socket,id=qmp,path=" + vmhost.QMPSocket + ",server=on,wait=off", "-mon", "chardev=qmp,mode=control",
		// The guest agent's one port: sessions, the proxy and the SSH
		// agent, multiplexed.
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "socket,id=agent,path=" + vmhost.AgentSocket + ",server=on,wait=off",
		"-device", "virtserialport,bus=vser.0,chardev=agent,name=" + agent.PortName,
		"-device", "virtio-rng-pci",
		// No network card, whatever the network mode: the guest reaches
		// the outside only through the supervisor's proxy, over the port.
		"-nic", "none",
	}
	if p.Display.UI != "" {
		// A window for the guest's own display (Chromium's kiosk in the
		// NixOS guest); the serial console stays where it is.
		a = append(a, "-display", p.Display.UI, "-device", "virtio-vga")
	} else {
		a = append(a, "-display", "none")
	}
	for i, s := range p.Shares {
		id := "fs" + strconv.Itoa(i)
		fsdev := "local,id=" + id + ",path=" + qemuOpt(s.Source) + ",security_model=none,multidevs=remap"
		if s.Kind == launch.ROBind {
			fsdev += ",readonly=on"
		}
		a = append(a, "-fsdev", fsdev, "-device", "virtio-9p-pci,fsdev="+id+",mount_tag="+s.Tag)
	}
	// The guest's Nix store (the first and only disk: /dev/vda inside).
	a = append(a,
		"-drive", "file="+qemuOpt(p.Store)+",format=raw,if=none,id=nixstore,cache=writeback,discard=unmap,werror=report",
		"-device", "virtio-blk-pci,drive=nixstore,serial=nix-store")
	if p.FS == launch.FSVirtiofs {
		// vhost-user needs the guest's memory shared with virtiofsd.
		a = append(a,
			"-object", "memory-backend-memfd,id=mem,size="+strconv.Itoa(vm.MemoryMiB)+"M,share=on",
			"-numa", "node,memdev=mem",
			"-chardev", "socket,id=vfs,path="+vmhost.Virtiofsd,
			"-device", "vhost-user-fs-pci,chardev=vfs,tag="+p.VFSTag)
	}
	return a
}

// planVMRun decides everything about a start without touching the host.
// id is the registry id it will have, which names its run directory, so a
// sweep never takes the directory of a VM that is registered.
func planVMRun(m *manifest.Manifest, rt *launch.Runtime, id string) (*vmPlan, error) {
	if m.VM == nil {
		return nil, errors.New("vm backend without a vm section in the manifest")
	}
	if m.VM.Network != rt.Network {
		return nil, launch.NewVMStartError(
			fmt.Sprintf("this guest was built with network=%t, the run asks for network=%t", m.VM.Network, rt.Network),
			"the vm backend builds the network into the guest: rebuild with the same --no-network setting")
	}
	if m.VM.Mkfs == "" {
		return nil, launch.NewVMStartError("this guest has no writable Nix store (its closure names no mkfs.ext4)", "rebuild it with this version of claude-sandbox (--rebuild)")
	}
	fs := rt.FS
	if fs == "" {
		fs = launch.FS9p
	}
	if fs != launch.FS9p && fs != launch.FSVirtiofs {
		return nil, &launch.OptionError{Flag: "--fs", Value: fs, Want: "9p or virtiofs"}
	}
	accel, auto, err := chooseAccel(rt.Accel)
	if err != nil {
		return nil, err
	}
	qemu, err := launch.FindQEMU(m)
	if err != nil {
		return nil, err
	}
	stateDir := rt.StateDir
	if stateDir == "" {
		if stateDir, err = launch.ProjectStatePath(rt.Project); err != nil {
			return nil, err
		}
	}
	p := &vmPlan{
		ID: id, StateDir: stateDir, RunDir: launch.RunDir(stateDir, id),
		QEMU: qemu, Accel: accel, AutoKVM: auto && accel == launch.AccelKVM, FS: fs,
		Project: rt.Project, HostHome: rt.Home, Shell: m.Shell,
	}
	p.User, p.UID, p.GID, p.Home = guestIdentity(rt)
	p.UsrBinEnv = m.UsrBinEnv
	p.Network, p.Egress = rt.Egress != nil, rt.Egress
	if sock, ok := rt.Getenv("SSH_AUTH_SOCK"); ok && filepath.IsAbs(sock) {
		if st, err := os.Stat(sock); err == nil && st.Mode()&os.ModeSocket != 0 {
			p.SSHAgent = sock
		}
	}
	p.Mkfs = m.VM.Mkfs
	p.Store, p.StoreLock = StoreImage(stateDir), filepath.Join(stateDir, launch.StateGuest, storeLockName)
	if otherVMRuns(stateDir) {
		p.Store, p.StoreLock = vmTempStore, ""
	}
	// The protection is the core's, as every backend gets it: ~/.claude
	// (ClaudeHome) and the project's protected paths, rendered by the
	// guest agent on its shares (guestProtection).
	realHome, herr := os.UserHomeDir()
	claude, claudeDirs, claudeList := launch.ClaudeHome(launch.UserFiles{Home: rt.Home, MayCreate: herr == nil && filepath.Clean(realHome) == rt.Home}, rt)
	covers, dirs, inProject, err := launch.ProjectProtection(rt.Project, rt, nil)
	if err != nil {
		return nil, err
	}
	p.Protected, p.Prepare = append(claude, covers...), append(claudeDirs, dirs...)
	p.ProtectedList = append(claudeList, inProject...)
	if fs == launch.FSVirtiofs {
		if p.Virtiofs, err = launch.FindVirtiofsd(m); err != nil {
			return nil, err
		}
		share, _ := m.VM.Share("project")
		p.VFSTag = share.Tag + "-vfs"
	}
	p.Sources, p.Present = hostShares(m, rt, stateDir, p.RunDir)
	if hostClaude := filepath.Join(rt.Home, ".claude"); !p.Present["claude"] && planned(p.Prepare, hostClaude) {
		// Made on the host at the start (ClaudeHome): shared from then.
		if _, ok := p.Sources["claude"]; ok {
			p.Sources["claude"], p.Present["claude"] = hostClaude, true
		}
	}
	if p.guestProtect, err = p.guestProtection(p.Protected); err != nil {
		return nil, err
	}
	for _, s := range m.VM.Shares {
		kind := launch.Bind
		if s.ReadOnly {
			kind = launch.ROBind
		}
		p.Shares = append(p.Shares, launch.Mount{Kind: kind, Source: p.Sources[s.Source], Dest: s.Target, Tag: s.Tag})
	}
	p.Display, p.Warning = chooseDisplay(launch.OSHost(rt), rt, qemu)
	p.Args = qemuArgs(m, p)
	return p, nil
}

// planned says whether the plan has the host make dir at the start.
func planned(prepare []launch.HostDir, dir string) bool {
	for _, d := range prepare {
		if d.Path == dir && !d.File {
			return true
		}
	}
	return false
}

// otherVMRuns says whether a VM of the project runs already (a --new
// launch, or one with other settings): its Nix store is that VM's.
func otherVMRuns(stateDir string) bool {
	recs, _ := launch.Running(stateDir)
	for _, r := range recs {
		if r.Backend == Name {
			return true
		}
	}
	return false
}
