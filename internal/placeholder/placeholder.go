// Package placeholder makes, holds and removes the empty directories that
// stand where a protected name is missing on the host, so that a read-only
// mount can cover the name inside a sandbox (a mount needs a mount point,
// and creating one through the sandbox's bind of the project would create
// it on the host anyway).
//
// Every sandbox that uses a placeholder holds a shared flock on it for its
// whole life (the launcher takes it; the sandbox's supervisor inherits the
// descriptor). The one that ends last gets the lock exclusively and removes
// the directory if it is still empty and still the one that was made. What
// was made is marked, so that a placeholder left by a run that was killed
// is recognised and removed by the next one: by an extended attribute on
// the directory itself (one system call, readable by a container's
// supervisor that is no longer root), or where the file system has none,
// by a file in a directory of the project's state.
//
// It never follows a symbolic link and never removes anything but an empty
// directory it can prove it made. It does not decide which names are
// protected (package launch does).
package placeholder

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Owner is who a root launcher makes a placeholder for.
type Owner struct{ UID, GID int }

// Held is a placeholder a sandbox uses: its path and the descriptor that
// carries the shared lock.
type Held struct {
	Path string
	File *os.File
	// Made: this call created the directory. Recorded: a sandbox made it
	// (this one, or one before), so the last one to release it removes it.
	Made, Recorded bool
}

// Hold makes path an empty directory if it does not exist (mode 0755,
// given to owner when set), records it in recordDir when it made it, and
// takes a shared lock on it. An existing directory is held as it is; a
// symbolic link or anything but a directory is an error.
func Hold(path, recordDir string, owner *Owner) (*Held, error) {
	for attempt := 0; ; attempt++ {
		made := false
		err := unix.Mkdir(path, 0o755)
		switch {
		case err == nil:
			made = true
			if owner != nil {
				if err := os.Lchown(path, owner.UID, owner.GID); err != nil {
					_ = unix.Rmdir(path)
					return nil, fmt.Errorf("making %s: %w", path, err)
				}
			}
			if err := mark(path, recordDir); err != nil {
				_ = unix.Rmdir(path)
				return nil, err
			}
		case !errors.Is(err, unix.EEXIST):
			return nil, fmt.Errorf("making %s: %w", path, err)
		}
		f, err := openDir(path)
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		// The last user of an earlier placeholder may have removed it
		// between the mkdir and the lock: hold the one that is there now.
		if same(f, path) {
			return &Held{Path: path, File: f, Made: made, Recorded: made || recordDir == "" || Recorded(recordDir, path)}, nil
		}
		f.Close()
		if attempt == 3 {
			return nil, fmt.Errorf("holding %s: it keeps being replaced", path)
		}
	}
}

// openDir opens a directory without following a symbolic link.
func openDir(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, &fs.PathError{Op: "open", Path: path, Err: err})
	}
	return os.NewFile(uintptr(fd), path), nil
}

// same says whether f is still the directory at path.
func same(f *os.File, path string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Lstat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino && a.Nlink > 0 && b.Mode&unix.S_IFMT == unix.S_IFDIR
}

// Release gives up a held placeholder (Held.Recorded says whether a
// sandbox made it): when no other sandbox holds it, it is removed if a
// sandbox made it and it is still the directory that was held, still
// empty. It reports whether it removed it. The descriptor is closed
// either way. A process that may not write recordDir (a container's
// supervisor, which is no longer root) leaves the record for the next
// launch to find stale.
func Release(path string, f *os.File, recorded bool, recordDir string) (bool, error) {
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return false, nil // another sandbox still uses it
		}
		return false, err
	}
	if !recorded {
		return false, nil
	}
	if !same(f, path) {
		return false, nil // another directory is there now: not this one's to touch
	}
	switch err := unix.Rmdir(path); {
	case err == nil:
		// Its mark went with it; a record file may remain.
		if recordDir != "" {
			_ = os.Remove(filepath.Join(recordDir, recordName(path)))
		}
		return true, nil
	case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST):
		// Someone on the host put something in it: it is theirs now.
		forget(recordDir, path)
		return false, nil
	default:
		return false, fmt.Errorf("removing %s: %w", path, err)
	}
}

// markAttr marks a placeholder a sandbox made.
const markAttr = "user.claude-sandbox.placeholder"

// mark marks path as made by a sandbox: an extended attribute, else a
// record file.
func mark(path, recordDir string) error {
	err := unix.Lsetxattr(path, markAttr, []byte("1"), 0)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES) {
		return fmt.Errorf("marking %s: %w", path, err)
	}
	return record(recordDir, path)
}

// recordName is a path's record file: the path with its separators
// escaped, so one directory holds every record of a project.
func recordName(path string) string {
	return strings.NewReplacer("%", "%25", "/", "%2F").Replace(path)
}

// Recorded says whether path is marked as a placeholder a sandbox made.
func Recorded(recordDir, path string) bool {
	var buf [4]byte
	if _, err := unix.Lgetxattr(path, markAttr, buf[:]); err == nil {
		return true
	}
	if recordDir == "" {
		return false
	}
	_, err := os.Lstat(filepath.Join(recordDir, recordName(path)))
	return err == nil
}

func record(recordDir, path string) error {
	if recordDir == "" {
		return nil
	}
	if err := os.MkdirAll(recordDir, 0o700); err != nil {
		return fmt.Errorf("recording %s: %w", path, err)
	}
	f, err := os.OpenFile(filepath.Join(recordDir, recordName(path)), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("recording %s: %w", path, err)
	}
	_, err = f.WriteString(path + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("recording %s: %w", path, err)
	}
	return nil
}

// forget removes path's mark and record (where this process may).
func forget(recordDir, path string) {
	_ = unix.Lremovexattr(path, markAttr)
	if recordDir != "" {
		_ = os.Remove(filepath.Join(recordDir, recordName(path)))
	}
}
