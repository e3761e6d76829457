package manifest

// VM is what the vm (QEMU) backend needs beyond the common fields. Owned by
// the vm backend; extend it with the template (templates/vm.nix).
type VM struct {
	Toplevel string `json:"toplevel"`
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd"`
}

func (v *VM) validate() error {
	return storePaths(map[string]string{"vm.toplevel": v.Toplevel, "vm.kernel": v.Kernel, "vm.initrd": v.Initrd})
}
