package vm

import "github.com/claude-sandbox/claude-sandbox/launch"

// kvmUsable is launch.KVMUsable; tests replace it.
var kvmUsable = launch.KVMUsable

// chooseAccel resolves --accel. auto takes KVM when /dev/kvm opens, TCG
// otherwise; kvm insists.
func chooseAccel(want string) (accel string, auto bool, err error) {
	switch want {
	case "", launch.AccelAuto:
		if kvmUsable() == nil {
			return launch.AccelKVM, true, nil
		}
		return launch.AccelTCG, true, nil
	case launch.AccelKVM:
		if err := kvmUsable(); err != nil {
			return "", false, &launch.NoKVMError{Reason: err.Error()}
		}
		return launch.AccelKVM, false, nil
	case launch.AccelTCG:
		return launch.AccelTCG, false, nil
	}
	return "", false, &launch.OptionError{Flag: "--accel", Value: want, Want: "auto, kvm or tcg"}
}
