package launch

// ProcSys points the sysctl reads at a fake tree.
var ProcSys = &procSys

// KVMDevicePath points KVMUsable at another device.
var KVMDevicePath = &kvmDevice

var DBusUnixAddress = dbusUnixAddress

var SudoArgv = sudoArgv

var TrustFileNames = [2]string{trustBundleFile, trustCAFile}

// WithholdSecrets is what planning does for a backend that brokers secrets.
func WithholdSecrets(rt *Runtime) { rt.secretVars = secretVarsOf(rt) }

var ChromiumCAPolicy = chromiumCAPolicy
