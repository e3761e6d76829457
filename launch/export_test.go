package launch

// ProcSys points the sysctl reads at a fake tree.
var ProcSys = &procSys

// KVMDevicePath points KVMUsable at another device.
var KVMDevicePath = &kvmDevice

var DBusUnixAddress = dbusUnixAddress

var SudoArgv = sudoArgv
