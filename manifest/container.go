package manifest

import (
	"fmt"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
)

// Container is what the container (systemd-nspawn) backend needs beyond the
// common fields (templates/container.nix writes it). systemd-nspawn itself
// is not here: it is the host's, because it must speak to the host's
// systemd and systemd-machined.
type Container struct {
	Toplevel string `json:"toplevel"` // the NixOS system: $toplevel/init, $toplevel/sw/bin, $toplevel/etc
	Root     string `json:"root"`     // the tree nspawn mounts at /usr (usr/bin/{sh,bash,env}, usr/lib64/<loader>)
	HostName string `json:"hostName"` // networking.hostName, given to the container
	Nsenter  string `json:"nsenter"`  // util-linux's nsenter, to join a running container
}

// A host name as NixOS accepts it (networking.hostName) and as nspawn
// passes it to sethostname(2).
// The length is checked apart: a counted repetition compiles to 61 copies,
// and this package's init runs on every launch.
var hostName = lazyregexp.New(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$`)

func (c *Container) validate() error {
	if err := storePaths(map[string]string{
		"container.toplevel": c.Toplevel, "container.root": c.Root, "container.nsenter": c.Nsenter,
	}); err != nil {
		return err
	}
	if len(c.HostName) > 63 || !hostName.MatchString(c.HostName) {
		return fmt.Errorf("container.hostName: %q is not a host name", c.HostName)
	}
	return nil
}
