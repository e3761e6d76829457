package launch

import (
	"fmt"
	"os"
	"strings"
)

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

// CheckUserNamespaces reads the sysctls that disable unprivileged user
// namespaces. It is a few file reads, cheap enough for every launch; bwrap
// would otherwise fail with a message that does not say what to change.
func CheckUserNamespaces(euid int) error {
	if euid == 0 {
		// bwrap run by root needs no user namespace.
		return nil
	}
	if readSysctl("user/max_user_namespaces") == "0" {
		return &UserNamespaceError{
			Reason: "user.max_user_namespaces is 0",
			Fix:    "run `sudo sysctl -w user.max_user_namespaces=15000`, or if you are inside a container, allow nested user namespaces",
		}
	}
	if readSysctl("kernel/unprivileged_userns_clone") == "0" {
		return &UserNamespaceError{
			Reason: "kernel.unprivileged_userns_clone is 0",
			Fix:    "run `sudo sysctl -w kernel.unprivileged_userns_clone=1`",
		}
	}
	if readSysctl("kernel/apparmor_restrict_unprivileged_userns") == "1" {
		return &UserNamespaceError{
			Reason: "AppArmor restricts them (kernel.apparmor_restrict_unprivileged_userns = 1, as on Ubuntu 24.04)",
			Fix:    "add an AppArmor profile allowing `userns` for the bwrap in /nix/store, or run `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`",
		}
	}
	return nil
}

func readSysctl(name string) string {
	data, err := os.ReadFile(fmt.Sprintf("%s/%s", procSys, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}
