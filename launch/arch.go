package launch

import (
	"runtime"
	"strings"
)

// Arch is what the program needs to know of a machine architecture.
type Arch struct {
	Nix     string // the first half of a Nix system name (x86_64-linux)
	QEMU    string // the QEMU system emulator's suffix (qemu-system-x86_64)
	Machine string // the QEMU machine type a guest boots on
	Console string // a guest kernel's first serial console
}

// arches is the architecture table, by GOARCH (a slice the linker lays
// out: a map would be built on every start). The seccomp filter's syscall
// numbers are in internal/seccomp: facts of a different kind.
var arches = []struct {
	goarch string
	arch   Arch
}{
	{"amd64", Arch{Nix: "x86_64", QEMU: "x86_64", Machine: "q35", Console: "ttyS0"}},
	{"arm64", Arch{Nix: "aarch64", QEMU: "aarch64", Machine: "virt", Console: "ttyAMA0"}},
}

// HostArch is this machine's architecture. One missing from the table
// goes by Go's name, which Nix and QEMU share for most others.
func HostArch() Arch {
	for _, a := range arches {
		if a.goarch == runtime.GOARCH {
			return a.arch
		}
	}
	return Arch{Nix: runtime.GOARCH, QEMU: runtime.GOARCH, Machine: "virt", Console: "ttyS0"}
}

// NixSystem is the Nix system a build for this machine targets.
func NixSystem() string { return HostArch().Nix + "-" + runtime.GOOS }

// ArchOfSystem is the architecture of a Nix system name ("aarch64-linux").
func ArchOfSystem(system string) Arch {
	name, _, _ := strings.Cut(system, "-")
	for _, a := range arches {
		if a.arch.Nix == name {
			return a.arch
		}
	}
	return Arch{Nix: name, QEMU: name, Machine: "virt", Console: "ttyS0"}
}
