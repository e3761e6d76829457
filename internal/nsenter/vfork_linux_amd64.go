package nsenter

import "syscall"

// vforkFlags make the children vforks sharing this process's memory.
const vforkFlags = syscall.CLONE_VM | syscall.CLONE_VFORK

// rawVfork makes a clone(2) system call whose child may share this stack.
//
//go:noescape
func rawVfork(trap, a1, a2, a3 uintptr) (r1 uintptr, err syscall.Errno)
