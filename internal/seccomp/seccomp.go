// Package seccomp holds the one seccomp filter claude-sandbox installs: it
// refuses the terminal-injection ioctls (TIOCSTI, TIOCLINUX) and allows
// everything else. It assembles classic BPF by hand and knows each
// architecture's syscall numbers; it installs nothing itself (bwrap reads
// the filter from a descriptor, internal/nsenter installs it on a join).
package seccomp

import (
	"encoding/binary"
	"runtime"

	"golang.org/x/sys/unix"
)

// Terminal injection. A sandboxed process shares the user's terminal, and
// ioctl(TIOCSTI) pushes bytes into that terminal's input queue: after the
// sandbox exits, the user's host shell would read and run them
// (CVE-2017-5226 for bubblewrap itself). TIOCLINUX can do the same on a
// virtual console.
//
// Two ways to stop it:
//   - bwrap --new-session: the sandbox runs in a new session with no
//     controlling terminal, so TIOCSTI fails. But then the terminal's
//     signals (Ctrl-C, Ctrl-Z, SIGWINCH on resize) no longer reach the
//     sandboxed program: Claude Code's UI would not follow window resizes
//     and an interactive shell would have no job control.
//   - a seccomp filter that fails those two ioctls with EPERM, everything
//     else untouched. This is what Flatpak does, and what we do: the
//     terminal keeps working as a terminal.
//
// The filter is hand-assembled (about 20 instructions) rather than built with
// github.com/elastic/go-seccomp-bpf v1.6.0, which was evaluated and has two
// gaps for exactly this filter: its argument comparisons are 64-bit
// (filter.go, Condition: "Arg_hi == Val_hi && Arg_lo == Val_lo"), while the
// kernel reads ioctl's request as a 32-bit int, so TIOCSTI|1<<32 would pass
// it (the Flatpak bypass CVE-2019-10063); and it sends every syscall whose
// audit arch is not the native one to the default action, so an i386
// int 0x80 ioctl from a 64-bit process would pass too. The filter below
// compares the low 32 bits only and handles the compat ABI and x32 ioctls;
// this package's tests run it through a BPF interpreter for each of those
// bypasses, and tests/bwrap_terminal_test.go attempts the ioctl for real.

// seccompArch is what the filter needs to know about one architecture.
type seccompArch struct {
	native, compat uint32   // audit arch values in seccomp_data.arch
	nativeIoctl    []uint32 // ioctl's syscall numbers for the native arch value (x86-64 and x32)
	compatIoctl    uint32   // ioctl in the 32-bit compat ABI
}

// archOf is the table of architectures, by GOARCH (a switch: a map would
// be built on every start of the program).
func archOf(goarch string) (seccompArch, bool) {
	switch goarch {
	case "amd64":
		// arch/x86/entry/syscalls/syscall_64.tbl: 16 (64-bit), 514 | __X32_SYSCALL_BIT (x32);
		// syscall_32.tbl: 54.
		return seccompArch{native: unix.AUDIT_ARCH_X86_64, compat: unix.AUDIT_ARCH_I386, nativeIoctl: []uint32{16, 0x40000000 | 514}, compatIoctl: 54}, true
	case "arm64":
		// include/uapi/asm-generic/unistd.h: 29; arch/arm/tools/syscall.tbl: 54.
		return seccompArch{native: unix.AUDIT_ARCH_AARCH64, compat: unix.AUDIT_ARCH_ARM, nativeIoctl: []uint32{29}, compatIoctl: 54}, true
	}
	return seccompArch{}, false
}

// The ioctl requests refused. Both are the same number on x86 and the
// asm-generic architectures.
var blockedIoctls = []uint32{unix.TIOCSTI, unix.TIOCLINUX}

// seccomp_data offsets (include/uapi/linux/seccomp.h): nr at 0, arch at 4,
// args[i] at 16+8i; the low half of a 64-bit argument comes first on the
// little-endian architectures above.
const (
	offNr      = 0
	offArch    = 4
	offArg1Low = 16 + 8
	retAllow   = unix.SECCOMP_RET_ALLOW
	retEPERM   = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	bpfLdAbsW  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	bpfJeqK    = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	bpfRetK    = unix.BPF_RET | unix.BPF_K
)

// terminalFilter assembles the filter for one architecture.
func terminalFilter(a seccompArch) []unix.SockFilter {
	ins := func(code uint16, jt, jf uint8, k uint32) unix.SockFilter {
		return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
	}
	// Tail: the two returns every path ends in.
	tail := []unix.SockFilter{ins(bpfRetK, 0, 0, retAllow), ins(bpfRetK, 0, 0, retEPERM)}
	// checkArgs: compare ioctl's request (low 32 bits) with each blocked
	// value; afterwards fall through to the allow/deny tail, whose offsets
	// are counted from the end of this block.
	checkArgs := func(after int) []unix.SockFilter {
		// after = instructions between this block's end and the tail's ALLOW.
		block := []unix.SockFilter{ins(bpfLdAbsW, 0, 0, offArg1Low)}
		n := len(blockedIoctls)
		for i, req := range blockedIoctls {
			// Match: over the compares still to come, the JA below, the
			// `after` instructions and ALLOW, onto EPERM.
			left := n - i - 1
			block = append(block, ins(bpfJeqK, uint8(left+1+after+1), 0, req))
		}
		// No match: jump to ALLOW.
		block = append(block, ins(unix.BPF_JMP|unix.BPF_JA, 0, 0, uint32(after)))
		return block
	}
	// The compat section: arch == compat && nr == compatIoctl → check args.
	compatArgs := checkArgs(0)
	compat := []unix.SockFilter{
		ins(bpfJeqK, 0, uint8(len(compatArgs)+2), a.compat), // not compat either: allow
		ins(bpfLdAbsW, 0, 0, offNr),
		ins(bpfJeqK, 0, uint8(len(compatArgs)), a.compatIoctl),
	}
	compat = append(compat, compatArgs...)
	// The native section ends by jumping over the compat section to the tail.
	nativeArgs := checkArgs(len(compat))
	native := []unix.SockFilter{ins(bpfLdAbsW, 0, 0, offNr)}
	for i, nr := range a.nativeIoctl {
		left := len(a.nativeIoctl) - i - 1
		native = append(native, ins(bpfJeqK, uint8(left+1), 0, nr))
	}
	// Not an ioctl: jump over the args check and the compat section to ALLOW.
	native = append(native, ins(unix.BPF_JMP|unix.BPF_JA, 0, 0, uint32(len(nativeArgs)+len(compat))))
	native = append(native, nativeArgs...)

	prog := []unix.SockFilter{ins(bpfLdAbsW, 0, 0, offArch)}
	prog = append(prog, ins(bpfJeqK, 0, uint8(len(native)), a.native))
	prog = append(prog, native...)
	prog = append(prog, compat...)
	prog = append(prog, tail...)
	return prog
}

// TerminalFilter returns the filter for this machine, or nil where no
// table exists (the sandbox then starts without it rather than not at all).
func TerminalFilter() []unix.SockFilter {
	a, ok := archOf(runtime.GOARCH)
	if !ok {
		return nil
	}
	return terminalFilter(a)
}

// Bytes is the filter as bwrap --seccomp reads it: struct sock_filter in
// native byte order, back to back.
func Bytes(prog []unix.SockFilter) []byte {
	out := make([]byte, 0, 8*len(prog))
	for _, f := range prog {
		out = binary.NativeEndian.AppendUint16(out, f.Code)
		out = append(out, f.Jt, f.Jf)
		out = binary.NativeEndian.AppendUint32(out, f.K)
	}
	return out
}
