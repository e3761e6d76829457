// Package sockpath reaches a Unix socket whatever the length of its path:
// a socket address holds 107 bytes, and a state directory under a deep home
// or a long project name can exceed that. It names the socket through
// /proc/self/fd of its open directory, which the kernel resolves like the
// real path. It opens no socket itself.
package sockpath

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Short returns an address for the socket at path that connect(2) and
// bind(2) accept, and the directory it goes through, which must stay open
// until the socket is connected or bound.
func Short(path string) (addr string, dir *os.File, err error) {
	dir, err = os.OpenFile(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, err
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), filepath.Base(path)), dir, nil
}
