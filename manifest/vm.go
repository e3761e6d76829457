package manifest

import (
	"fmt"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
)

// VM is what the vm (QEMU) backend needs beyond the common fields: how to
// boot the guest (templates/vm.nix writes it from the NixOS configuration)
// and which host directories its declared mounts expect.
type VM struct {
	Toplevel string `json:"toplevel"` // the NixOS system
	Kernel   string `json:"kernel"`   // the kernel image QEMU loads (-kernel)
	Initrd   string `json:"initrd"`   // the initial ramdisk (-initrd)
	// KernelParams is the whole kernel command line, one parameter an
	// element: init=…, console=…, the configuration's boot.kernelParams.
	KernelParams []string `json:"kernelParams"`
	// Network: whether the guest was built to reach the network (through
	// the supervisor's proxy, which its Nix daemon is told about); the
	// launcher offers the proxy exactly then. No guest has a network card.
	Network bool `json:"network"`
	// Shares are the guest's file-system mounts of host directories, each
	// declared in the guest's fstab under its tag.
	Shares []VMShare `json:"shares"`
	// QEMU is qemu-system-<arch> from nixpkgs; empty means the host's.
	QEMU string `json:"qemu,omitempty"`
	// Virtiofsd serves the project over virtiofs (--fs virtiofs); empty
	// means the host's.
	Virtiofsd string `json:"virtiofsd,omitempty"`
	MemoryMiB int    `json:"memoryMiB"`
	Cores     int    `json:"cores"`
	// Mkfs is mkfs.ext4, which makes the guest's Nix store disk on the
	// host the first time (its upper layer over the host's store).
	Mkfs string `json:"mkfs"`
}

// VMShare is one host directory the guest mounts.
type VMShare struct {
	Tag string `json:"tag"` // the 9p mount tag the guest's fstab names
	// Source says which host directory backs it; the launcher decides the
	// path at run time.
	Source   string `json:"source"`
	Target   string `json:"target"` // the guest mount point, as declared
	ReadOnly bool   `json:"readOnly"`
}

// VMShareSources are the host directories a launcher knows how to share.
// (~/.ssh is not one: its public parts are copied into the metadata share,
// its private keys never reach the guest.)
var VMShareSources = []string{"store", "meta", "project", "claude", "state", "git", "gh"}

// requiredShares: without these the guest cannot boot or run anything.
var requiredShares = []string{"store", "meta", "project"}

var (
	mountTag    = lazyregexp.New(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`) // and at most 31 bytes: a counted repetition would cost every launch its compilation
	kernelParam = lazyregexp.New(`^[\x21-\x7e]+$`)               // printable, no space or quote games
)

func (v *VM) validate() error {
	if err := storePaths(map[string]string{"vm.toplevel": v.Toplevel, "vm.kernel": v.Kernel, "vm.initrd": v.Initrd, "vm.mkfs": v.Mkfs}); err != nil {
		return err
	}
	for field, p := range map[string]string{"vm.qemu": v.QEMU, "vm.virtiofsd": v.Virtiofsd} {
		if p != "" {
			if err := storePath(p); err != nil {
				return fmt.Errorf("%s: %w", field, err)
			}
		}
	}
	if len(v.KernelParams) == 0 {
		return fmt.Errorf("vm.kernelParams: empty")
	}
	for _, p := range v.KernelParams {
		if !kernelParam.MatchString(p) || strings.ContainsAny(p, `"'`) {
			return fmt.Errorf("vm.kernelParams: %q is not a plain kernel parameter", p)
		}
	}
	if v.MemoryMiB < 128 || v.MemoryMiB > 1<<20 {
		return fmt.Errorf("vm.memoryMiB: %d out of range", v.MemoryMiB)
	}
	if v.Cores < 1 || v.Cores > 256 {
		return fmt.Errorf("vm.cores: %d out of range", v.Cores)
	}
	tags := map[string]bool{}
	sources := map[string]bool{}
	for _, s := range v.Shares {
		if len(s.Tag) > 31 || !mountTag.MatchString(s.Tag) {
			return fmt.Errorf("vm.shares: tag %q is not a plain mount tag", s.Tag)
		}
		if tags[s.Tag] {
			return fmt.Errorf("vm.shares: tag %q twice", s.Tag)
		}
		tags[s.Tag] = true
		known := false
		for _, k := range VMShareSources {
			known = known || k == s.Source
		}
		if !known {
			return fmt.Errorf("vm.shares: %s: unknown source %q", s.Tag, s.Source)
		}
		if sources[s.Source] {
			return fmt.Errorf("vm.shares: source %q twice", s.Source)
		}
		sources[s.Source] = true
		if !strings.HasPrefix(s.Target, "/") {
			return fmt.Errorf("vm.shares: %s: target %q is not absolute", s.Tag, s.Target)
		}
		if (s.Source == "store" || s.Source == "meta") && !s.ReadOnly {
			return fmt.Errorf("vm.shares: %s must be read-only", s.Source)
		}
	}
	for _, r := range requiredShares {
		if !sources[r] {
			return fmt.Errorf("vm.shares: no %q share", r)
		}
	}
	return nil
}

// Share returns the share backed by source, if the guest declares one.
func (v *VM) Share(source string) (VMShare, bool) {
	for _, s := range v.Shares {
		if s.Source == source {
			return s, true
		}
	}
	return VMShare{}, false
}
