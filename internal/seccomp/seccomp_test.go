package seccomp

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// runBPF interprets the few classic-BPF instructions the filter uses over a
// seccomp_data record, as the kernel does (native-endian loads).
func runBPF(t *testing.T, prog []unix.SockFilter, data []byte) uint32 {
	t.Helper()
	var acc uint32
	for pc := 0; pc < len(prog); pc++ {
		in := prog[pc]
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			acc = binary.LittleEndian.Uint32(data[in.K:])
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K:
			if acc == in.K {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case unix.BPF_JMP | unix.BPF_JA:
			pc += int(in.K)
		case unix.BPF_RET | unix.BPF_K:
			return in.K
		default:
			t.Fatalf("instruction %d: unexpected opcode %#x", pc, in.Code)
		}
		if pc+1 > len(prog) {
			t.Fatalf("jump past the end at %d", pc)
		}
	}
	t.Fatal("fell off the end of the program")
	return 0
}

func seccompData(arch, nr uint32, arg1 uint64) []byte {
	d := make([]byte, 64)
	binary.LittleEndian.PutUint32(d[0:], nr)
	binary.LittleEndian.PutUint32(d[4:], arch)
	binary.LittleEndian.PutUint64(d[24:], arg1)
	return d
}

func TestTerminalFilterBlocksInjectionOnEveryABI(t *testing.T) {
	a, _ := archOf("amd64")
	amd64 := terminalFilter(a)
	a, _ = archOf("arm64")
	arm64 := terminalFilter(a)
	eperm := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	allow := uint32(unix.SECCOMP_RET_ALLOW)
	cases := []struct {
		name string
		prog []unix.SockFilter
		data []byte
		want uint32
	}{
		{"x86-64 TIOCSTI", amd64, seccompData(unix.AUDIT_ARCH_X86_64, 16, unix.TIOCSTI), eperm},
		{"x86-64 TIOCLINUX", amd64, seccompData(unix.AUDIT_ARCH_X86_64, 16, unix.TIOCLINUX), eperm},
		{"x86-64 TIOCSTI with high bits set", amd64, seccompData(unix.AUDIT_ARCH_X86_64, 16, 1<<32|unix.TIOCSTI), eperm},
		{"x32 TIOCSTI", amd64, seccompData(unix.AUDIT_ARCH_X86_64, 0x40000000|514, unix.TIOCSTI), eperm},
		{"i386 TIOCSTI (int 0x80)", amd64, seccompData(unix.AUDIT_ARCH_I386, 54, unix.TIOCSTI), eperm},
		{"i386 TIOCLINUX", amd64, seccompData(unix.AUDIT_ARCH_I386, 54, unix.TIOCLINUX), eperm},
		{"x86-64 TIOCGWINSZ", amd64, seccompData(unix.AUDIT_ARCH_X86_64, 16, unix.TIOCGWINSZ), allow},
		{"x86-64 TIOCSCTTY", amd64, seccompData(unix.AUDIT_ARCH_X86_64, 16, unix.TIOCSCTTY), allow},
		{"x86-64 write with TIOCSTI as its 2nd argument", amd64, seccompData(unix.AUDIT_ARCH_X86_64, 1, unix.TIOCSTI), allow},
		{"i386 write", amd64, seccompData(unix.AUDIT_ARCH_I386, 4, unix.TIOCSTI), allow},
		{"i386 TCGETS", amd64, seccompData(unix.AUDIT_ARCH_I386, 54, unix.TCGETS), allow},
		{"another arch", amd64, seccompData(unix.AUDIT_ARCH_AARCH64, 29, unix.TIOCSTI), allow},
		{"arm64 TIOCSTI", arm64, seccompData(unix.AUDIT_ARCH_AARCH64, 29, unix.TIOCSTI), eperm},
		{"arm (compat) TIOCSTI", arm64, seccompData(unix.AUDIT_ARCH_ARM, 54, unix.TIOCSTI), eperm},
		{"arm64 read", arm64, seccompData(unix.AUDIT_ARCH_AARCH64, 63, 0), allow},
	}
	for _, c := range cases {
		if got := runBPF(t, c.prog, c.data); got != c.want {
			t.Errorf("%s: filter returned %#x, want %#x", c.name, got, c.want)
		}
	}
	if len(Bytes(amd64)) != 8*len(amd64) {
		t.Error("filterBytes is not 8 bytes per instruction")
	}
}
