package tty

import (
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY returns a pseudo-terminal pair.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	// A build sandbox may have a /dev/ptmx without a usable /dev/pts.
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("no usable pseudo-terminals here: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("no usable pseudo-terminals here: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no usable pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

func TestRawModeAndBack(t *testing.T) {
	_, s := openPTY(t)
	fd := int(s.Fd())
	if !IsTerminal(fd) {
		t.Fatal("a pty is not a terminal")
	}
	before, _ := unix.IoctlGetTermios(fd, unix.TCGETS)
	restore, err := MakeRaw(fd)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := unix.IoctlGetTermios(fd, unix.TCGETS)
	if raw.Lflag&(unix.ECHO|unix.ICANON|unix.ISIG) != 0 || raw.Oflag&unix.OPOST != 0 || raw.Cc[unix.VMIN] != 1 {
		t.Errorf("not raw: lflag %#x oflag %#x vmin %d", raw.Lflag, raw.Oflag, raw.Cc[unix.VMIN])
	}
	restore()
	after, _ := unix.IoctlGetTermios(fd, unix.TCGETS)
	if *after != *before {
		t.Error("restore did not bring the terminal back")
	}
	f, _ := os.CreateTemp(t.TempDir(), "x")
	if IsTerminal(int(f.Fd())) {
		t.Error("a file is a terminal")
	}
}

func TestSizes(t *testing.T) {
	m, s := openPTY(t)
	if err := unix.IoctlSetWinsize(int(m.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 33, Col: 101}); err != nil {
		t.Fatal(err)
	}
	if r, c, ok := Size(int(s.Fd())); !ok || r != 33 || c != 101 {
		t.Errorf("Size = %d×%d %v", r, c, ok)
	}
	m2, s2 := openPTY(t)
	CopySize(int(s.Fd()), int(m2.Fd()))
	if r, c, ok := Size(int(s2.Fd())); !ok || r != 33 || c != 101 {
		t.Errorf("after CopySize: %d×%d %v", r, c, ok)
	}
}
