package manifest

// Container is what the container (systemd-nspawn) backend needs beyond the
// common fields. Owned by the container backend; extend it with the
// template (templates/container.nix).
type Container struct {
	Toplevel string `json:"toplevel"` // the NixOS system: $toplevel/init, $toplevel/sw/bin
}

func (c *Container) validate() error {
	return storePaths(map[string]string{"container.toplevel": c.Toplevel})
}
