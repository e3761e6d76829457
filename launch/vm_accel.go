package launch

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Accelerators: --accel auto|kvm|tcg.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// FS choices for the project share: --fs 9p|virtiofs.
const (
	FS9p       = "9p"
	FSVirtiofs = "virtiofs"
)

// NoKVMError: KVM was asked for (or chosen by auto) and does not work here.
type NoKVMError struct {
	Reason string
	Auto   bool // chosen by --accel auto rather than asked for
}

func (e *NoKVMError) Error() string { return "KVM does not work here: " + e.Reason }
func (e *NoKVMError) Hint() string {
	if e.Auto {
		return "--accel auto found /dev/kvm but the guest could not run on it (nested virtualisation often fails like this); pass --accel tcg (emulation: slower, but works everywhere)"
	}
	return "pass --accel tcg (emulation: slower, but works everywhere)"
}

// kvmDevice is where KVM lives; a variable so tests can point it elsewhere.
var kvmDevice = "/dev/kvm"

// KVMUsable says whether this user can open /dev/kvm and speaks its API;
// errors.Is tells a missing device (os.ErrNotExist) from a refused one
// (os.ErrPermission). It does not prove a guest will run: nested KVM can
// pass this and still fail or spin, which the supervisor's boot watchdog
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

// chooseAccel resolves --accel. auto takes KVM when /dev/kvm opens, TCG
// otherwise; kvm insists.
func chooseAccel(want string) (accel string, auto bool, err error) {
	switch want {
	case "", AccelAuto:
		if KVMUsable() == nil {
			return AccelKVM, true, nil
		}
		return AccelTCG, true, nil
	case AccelKVM:
		if err := KVMUsable(); err != nil {
			return "", false, &NoKVMError{Reason: err.Error()}
		}
		return AccelKVM, false, nil
	case AccelTCG:
		return AccelTCG, false, nil
	}
	return "", false, &VMOptionError{Flag: "--accel", Value: want, Want: "auto, kvm or tcg"}
}

// VMOptionError is a vm flag with a value that is not one of its choices.
type VMOptionError struct{ Flag, Value, Want string }

func (e *VMOptionError) Error() string {
	return fmt.Sprintf("%s %q: not one of %s", e.Flag, e.Value, e.Want)
}
func (e *VMOptionError) Hint() string { return fmt.Sprintf("use %s %s", e.Flag, e.Want) }
