// Package backends is the one place that knows every backend: it picks one
// by name (a switch, no init-time registration) and dispatches this
// binary's helper roles inside a sandbox. It sits above the launch core,
// which cannot import the backends it drives.
package backends

import (
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/bubblewrap"
	"github.com/claude-sandbox/claude-sandbox/launch/container"
	"github.com/claude-sandbox/claude-sandbox/launch/vm"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/agent"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/vmhost"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
)

// Default is the backend a launch uses unless told otherwise: the one that
// needs no privilege.
const Default = bubblewrap.Name

// Get returns the backend of a name; an unknown name is the same usage
// error a build reports (nixgen's list of backends is the build side of
// this switch, and a test keeps them equal). A switch, not a map: a map
// would be built on every start of the program.
func Get(name string) (launch.Backend, error) {
	switch name {
	case bubblewrap.Name:
		return bubblewrap.Backend{}, nil
	case container.Name:
		return container.Backend{}, nil
	case vm.Name:
		return vm.Backend{}, nil
	}
	return nil, &nixgen.UnknownBackendError{Name: name}
}

// Names lists the backends Get knows, sorted.
func Names() []string { return []string{bubblewrap.Name, container.Name, vm.Name} }

// EntryPrefix begins the entry command names of the original project's
// backends: claude-sandbox-container runs the container backend.
const EntryPrefix = "claude-sandbox-"

// FromEntryName is the backend an entry command name selects
// (claude-sandbox-vm: vm), if any.
func FromEntryName(command string) (string, bool) {
	if len(command) <= len(EntryPrefix) || command[:len(EntryPrefix)] != EntryPrefix {
		return "", false
	}
	name := command[len(EntryPrefix):]
	_, err := Get(name)
	return name, err == nil
}

// Helper returns the main of a role this binary plays inside a sandbox
// when it is started under that role's name (the container's init), or
// nil.
func Helper(argv0 string) func(args []string) int {
	switch argv0 {
	case container.InitPath:
		return container.Init
	case container.NspawnWrapperName:
		return container.NspawnWrapper
	case agent.Path:
		return agent.Main
	}
	return nil
}

// ResetGuestStore throws away a project's guest Nix store (the vm
// backend's, kept between runs) and says how large it was ("" when there
// was none). Refused while a VM of the project runs.
func ResetGuestStore(project string) (size string, err error) {
	dir, err := launch.ProjectStatePath(project)
	if err != nil {
		return "", err
	}
	size = vm.StoreSize(dir)
	if size == "" {
		return "", nil
	}
	return size, vm.ResetStore(dir, project)
}

// GuestStores lists the guest Nix stores of this user's projects (the vm
// backend's), largest first, as "project: size" lines for doctor.
func GuestStores() ([]string, int64, error) {
	stores, err := vm.GuestStores()
	if err != nil {
		return nil, 0, err
	}
	var lines []string
	var total int64
	for _, s := range stores {
		lines = append(lines, s.Project+": "+vmhost.HumanSize(s.Bytes))
		total += s.Bytes
	}
	return lines, total, nil
}
