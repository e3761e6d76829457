package vmhost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// The guest's own Nix store lives on an ext4 image: the upper layer of an
// overlay whose lower layer is the host's store (read-only, 9p), and the
// guest's /nix/var (its Nix database). It is made on the host the first
// time, as NixOS's qemu-vm.nix and microvm.nix make their disk images:
// NixOS's scripted stage 1 does not format file systems (autoFormat is
// x-systemd.makefs, which only systemd honours), and a guest that had to
// carry mkfs into its initrd would be slower to boot every time.

// storeLockWait bounds the wait for the previous VM of the project to
// power off and let the store go.
var storeLockWait = 90 * time.Second

func (v *VM) prepareStore(ctx context.Context) error {
	s := v.spec
	if s.Store == "" {
		return nil
	}
	if s.StoreLock != "" {
		f, err := os.OpenFile(s.StoreLock, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return startFault(err.Error())
		}
		deadline := time.Now().Add(storeLockWait)
		for unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			if time.Now().After(deadline) || ctx.Err() != nil {
				f.Close()
				return startFault("the guest's Nix store (" + s.Store + ") is still in use by another VM of this project")
			}
			time.Sleep(100 * time.Millisecond)
		}
		v.lock = f
	}
	if _, err := os.Stat(s.Store); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return startFault(err.Error())
	}
	if err := MakeStore(ctx, s.Mkfs, s.Store, s.StoreMiB); err != nil {
		if v.lock != nil {
			v.lock.Close()
			v.lock = nil
		}
		return startFault("making the guest's Nix store: " + err.Error())
	}
	return nil
}

// MakeStore creates a sparse ext4 image of mib MiB at path, whole or not
// at all (a temporary file renamed into place).
func MakeStore(ctx context.Context, mkfs, path string, mib int) error {
	if mkfs == "" {
		return errors.New("the closure names no mkfs.ext4")
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".new")
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(int64(mib) << 20)
	f.Close()
	if err != nil {
		os.Remove(tmp)
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// The root owned by the guest's root, whoever runs mkfs; lazy
	// initialisation keeps the first start quick.
	cmd := exec.CommandContext(ctx, mkfs, "-t", "ext4", "-q", "-F", "-L", "nix-store-rw",
		"-E", "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1", tmp, strconv.Itoa(mib)+"M")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%s: %v: %s", mkfs, err, out)
	}
	return os.Rename(tmp, path)
}

// StoreSize is the space a store image takes on the host (it is sparse).
func StoreSize(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// HumanSize writes a byte count the way ps and doctor show it.
func HumanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
}
