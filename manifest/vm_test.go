package manifest

import (
	"strings"
	"testing"
)

func vmManifest() *Manifest {
	s := "/nix/store/0000000000000000000000000000000a-"
	return &Manifest{
		Schema: 1, Backend: "vm",
		Env: s + "system-path", Path: []string{s + "system-path/bin"}, Shell: s + "bash/bin/bash",
		UsrBinEnv: s + "coreutils/bin/env", Claude: s + "claude-code/bin/claude",
		VM: &VM{
			Toplevel: s + "nixos-system", Kernel: s + "linux/bzImage", Initrd: s + "initrd/initrd", Mkfs: s + "e2fsprogs/bin/mkfs.ext4",
			KernelParams: []string{"console=ttyS0,115200n8", "init=" + s + "nixos-system/init"},
			Shares: []VMShare{
				{Tag: "nix-store", Source: "store", Target: "/nix/.ro-store", ReadOnly: true},
				{Tag: "csb-meta", Source: "meta", Target: "/mnt/claude-sandbox/meta", ReadOnly: true},
				{Tag: "csb-project", Source: "project", Target: "/mnt/claude-sandbox/project"},
			},
			MemoryMiB: 2048, Cores: 2,
		},
	}
}

func TestVMManifestValid(t *testing.T) {
	if err := vmManifest().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestVMManifestRefusesWhatLaunchMustNotTrust(t *testing.T) {
	for name, mutate := range map[string]func(v *VM){
		"kernel outside the store": func(v *VM) { v.Kernel = "/boot/vmlinuz" },
		"qemu outside the store":   func(v *VM) { v.QEMU = "/usr/bin/qemu-system-x86_64" },
		"mkfs outside the store":   func(v *VM) { v.Mkfs = "/sbin/mkfs.ext4" },
		"~/.ssh as a share":        func(v *VM) { v.Shares[2].Source = "ssh" },
		"parameter with a space":   func(v *VM) { v.KernelParams = append(v.KernelParams, "a b") },
		"parameter with a quote":   func(v *VM) { v.KernelParams = append(v.KernelParams, `x="y`) },
		"no parameters":            func(v *VM) { v.KernelParams = nil },
		"tag with a comma":         func(v *VM) { v.Shares[2].Tag = "csb,project" },
		"tag twice":                func(v *VM) { v.Shares[2].Tag = "csb-meta" },
		"unknown source":           func(v *VM) { v.Shares[2].Source = "etc" },
		"no project share":         func(v *VM) { v.Shares = v.Shares[:2] },
		"writable metadata":        func(v *VM) { v.Shares[1].ReadOnly = false },
		"writable store":           func(v *VM) { v.Shares[0].ReadOnly = false },
		"relative target":          func(v *VM) { v.Shares[2].Target = "project" },
		"no memory":                func(v *VM) { v.MemoryMiB = 0 },
	} {
		m := vmManifest()
		mutate(m.VM)
		if err := m.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), "vm.") {
			t.Errorf("%s: error %q does not name the field", name, err)
		}
	}
	m := vmManifest()
	m.VM = nil
	if err := m.Validate(); err == nil {
		t.Error("vm backend without a vm section accepted")
	}
}
