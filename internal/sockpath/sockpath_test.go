package sockpath

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestShortReachesLongPaths(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("long-directory-name-", 6))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "qmp.sock")
	if len(sock) < 108 {
		t.Fatalf("test path too short: %d", len(sock))
	}
	// Listen through the same trick (the kernel resolves /proc/self/fd).
	addr, d, err := Short(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	l, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("socket not at its real path: %v", err)
	}
	addr2, d2, _ := Short(sock)
	defer d2.Close()
	c, err := net.Dial("unix", addr2)
	if err != nil {
		t.Fatalf("dialing a %d-byte socket path: %v", len(sock), err)
	}
	c.Close()
}
