//go:build linux && !amd64

package nsenter

import "syscall"

// vforkFlags: without rawVfork's register trick, the children are
// copying forks, which share nothing with this process.
const vforkFlags = 0

//go:norace
//go:nocheckptr
//go:nosplit
func rawVfork(trap, a1, a2, a3 uintptr) (uintptr, syscall.Errno) {
	r1, _, e := syscall.RawSyscall6(trap, a1, a2, a3, 0, 0, 0)
	return r1, e
}
