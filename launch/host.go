package launch

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// What the host offers the backends, found the way a launch finds it.
// doctor asks these same functions, so what it reports is what a launch
// does.

// UserNamespaceError: the kernel will not let this user create the
// namespaces bubblewrap needs.
type UserNamespaceError struct {
	Reason string
	Fix    string
}

func (e *UserNamespaceError) Error() string {
	return "unprivileged user namespaces are disabled: " + e.Reason
}
func (e *UserNamespaceError) Hint() string { return e.Fix }

// procSys is where sysctls are read; a variable so tests can point it at a fake tree.
var procSys = "/proc/sys"

// Sysctl reads a sysctl by its path under /proc/sys ("user/max_user_namespaces");
// ok is false where the kernel has no such setting.
func Sysctl(name string) (value string, ok bool) {
	data, err := os.ReadFile(filepath.Join(procSys, name))
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(data)), true
}

// CheckUserNamespaces reads the sysctls that disable unprivileged user
// namespaces. It is a few file reads, cheap enough for every launch; bwrap
// would otherwise fail with a message that does not say what to change.
func CheckUserNamespaces(euid int) error {
	if euid == 0 {
		// bwrap run by root needs no user namespace.
		return nil
	}
	if v, _ := Sysctl("user/max_user_namespaces"); v == "0" {
		return &UserNamespaceError{
			Reason: "user.max_user_namespaces is 0",
			Fix:    "run `sudo sysctl -w user.max_user_namespaces=15000`, or if you are inside a container, allow nested user namespaces",
		}
	}
	if v, _ := Sysctl("kernel/unprivileged_userns_clone"); v == "0" {
		return &UserNamespaceError{
			Reason: "kernel.unprivileged_userns_clone is 0",
			Fix:    "run `sudo sysctl -w kernel.unprivileged_userns_clone=1`",
		}
	}
	if v, _ := Sysctl("kernel/apparmor_restrict_unprivileged_userns"); v == "1" {
		return &UserNamespaceError{
			Reason: "AppArmor restricts them (kernel.apparmor_restrict_unprivileged_userns = 1, as on Ubuntu 24.04)",
			Fix:    "add an AppArmor profile allowing `userns` for the bwrap in /nix/store, or run `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`",
		}
	}
	return nil
}

// systemDirs are searched before $PATH for the host's own programs: under
// sudo PATH is secure_path, but a root shell's PATH is whatever the user
// set, and root must not run a systemd-nspawn from a writable directory by
// accident.
var systemDirs = []string{"/run/current-system/sw/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"}

// FindSystemProgram finds a host program in the system directories, else
// on $PATH.
func FindSystemProgram(name string) (string, bool) {
	for _, dir := range systemDirs {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, true
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	return "", false
}

// FindNspawn returns the host's systemd-nspawn. The host's, not one from
// nixpkgs: it registers the machine with the host's systemd-machined and
// moves itself into a scope of the host's systemd, which a different
// version need not speak to.
func FindNspawn() (string, error) {
	if p, ok := FindSystemProgram("systemd-nspawn"); ok {
		return p, nil
	}
	return "", &HostError{
		Backend: "container",
		Reason:  "systemd-nspawn is not installed",
		Fix:     "install it (Debian/Ubuntu: apt install systemd-container; Fedora: dnf install systemd-container; NixOS has it), or use --backend bubblewrap",
	}
}

// FindQEMU names the system emulator: nixpkgs' from a vm manifest (m may
// be nil), else the host's.
func FindQEMU(m *manifest.Manifest) (string, error) {
	if m != nil && m.VM != nil && m.VM.QEMU != "" {
		return m.VM.QEMU, nil
	}
	name := "qemu-system-" + HostArch().QEMU
	p, err := exec.LookPath(name)
	if err != nil {
		return "", &VMStartError{Reason: name + " is not installed", hint: "install QEMU (Debian: apt install qemu-system-x86), or build with a nixpkgs that has qemu_kvm"}
	}
	return p, nil
}

// virtiofsdPaths are where distributions install virtiofsd off $PATH.
var virtiofsdPaths = []string{"/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd", "/usr/lib/virtiofsd"}

// FindVirtiofsd finds virtiofsd: nixpkgs' from a vm manifest (m may be
// nil), else the host's (on PATH, or where Debian and Fedora install it).
func FindVirtiofsd(m *manifest.Manifest) (string, error) {
	if m != nil && m.VM != nil && m.VM.Virtiofsd != "" {
		return m.VM.Virtiofsd, nil
	}
	if p, err := exec.LookPath("virtiofsd"); err == nil {
		return p, nil
	}
	for _, p := range virtiofsdPaths {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &VMStartError{Reason: "--fs virtiofs: virtiofsd is not installed", hint: "install it (Debian: qemu-system-common ships /usr/lib/qemu/virtiofsd), or use --fs 9p"}
}

// kvmDevice is where KVM lives; a variable so tests can point it elsewhere.
var kvmDevice = "/dev/kvm"

// KVMDevice names the device KVMUsable opens.
func KVMDevice() string { return kvmDevice }

// KVMUsable says whether this user can open /dev/kvm and speaks its API;
// errors.Is tells a missing device (os.ErrNotExist) from a refused one
// (os.ErrPermission). It does not prove a guest will run: nested KVM can
// pass this and still fail or spin, which the VM supervisor's boot watchdog
// (and doctor's boot probe) catch.
func KVMUsable() error {
	f, err := os.OpenFile(kvmDevice, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("%s: %w (join the kvm group)", kvmDevice, os.ErrPermission)
		}
		return err
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xAE00 // _IO(KVMIO, 0x00), linux/kvm.h
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("%s: %w", kvmDevice, err)
	}
	if v != 12 { // KVM_API_VERSION, stable since Linux 2.6.22
		return fmt.Errorf("%s: unexpected KVM API version %d", kvmDevice, v)
	}
	return nil
}
