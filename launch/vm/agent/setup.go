package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// setup makes the guest ready for the run's sessions: the user, the home
// and its entries, the project at its host path, the protected paths, and
// what shebangs expect. It runs once, as root, before any session.
func setup(c *Config) error {
	if err := addUser(c); err != nil {
		return fmt.Errorf("creating the user: %w", err)
	}
	// The directories above the project and the bind targets are the
	// guest's own, on its memory root: the user must be able to walk
	// them (0755), as on the host; home itself is the user's (below).
	for _, d := range []string{c.Home, filepath.Join(c.Home, ".local"), c.Project} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	owned := []string{c.Home}
	for _, b := range c.Binds {
		src := filepath.Join(Mnt, b.Share)
		if err := os.MkdirAll(src, 0o700); err != nil {
			return err
		}
		if err := os.MkdirAll(b.Target, 0o755); err != nil {
			return err
		}
		if err := bind(src, b.Target, false); err != nil {
			return err
		}
		if b.Target == filepath.Join(c.Home, ".local") {
			owned = append(owned, b.Target)
		}
	}
	if c.SSH {
		ssh := filepath.Join(c.Home, ".ssh")
		if err := os.MkdirAll(ssh, 0o700); err != nil {
			return err
		}
		// The metadata share is read-only: so is ~/.ssh.
		if err := bind(filepath.Join(MetaDir, SSHDir), ssh, true); err != nil {
			return err
		}
	}
	if c.FS == "virtiofs" {
		if err := unix.Mount(c.VFSTag, c.Project, "virtiofs", 0, ""); err != nil {
			return fmt.Errorf("mounting the project over virtiofs: %w", err)
		}
	} else if err := bind(filepath.Join(Mnt, "project"), c.Project, false); err != nil {
		return fmt.Errorf("mounting the project: %w", err)
	}
	for _, p := range c.Protect {
		if err := protect(p, c); err != nil {
			return fmt.Errorf("protecting %s: %w", p.Path, err)
		}
	}
	if err := secretsOutside(c); err != nil {
		return err
	}
	if d := filepath.Join(c.Home, ".config"); isDir(d) {
		owned = append(owned, d)
	}
	for _, cp := range c.Copies {
		if err := copyFile(filepath.Join(MetaDir, cp.Name), cp.Target); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return err
		}
		owned = append(owned, cp.Target)
	}
	if c.UID != 0 {
		for _, p := range owned {
			_ = os.Lchown(p, c.UID, c.GID)
		}
	}
	_ = os.Chmod(c.Home, 0o700)
	// What shebangs expect (environment.binsh and environment.usrbinenv on
	// NixOS); the loader of prebuilt binaries is the system's own.
	for _, l := range [][2]string{{c.Shell, "/bin/sh"}, {c.Shell, "/bin/bash"}, {c.UsrBinEnv, "/usr/bin/env"}} {
		if l[0] == "" {
			continue
		}
		if _, err := os.Lstat(l[1]); err == nil {
			continue
		}
		_ = os.MkdirAll(filepath.Dir(l[1]), 0o755)
		if err := os.Symlink(l[0], l[1]); err != nil {
			return err
		}
	}
	startKiosk(c)
	// The serial console is the boot log only, but kernel chatter there
	// costs emulated time: emergencies only from now on.
	_ = os.WriteFile("/proc/sys/kernel/printk", []byte("1\n"), 0o644)
	return nil
}

// secretsOutside places what the host's supervisor made for the sandbox's
// secrets: the CA's trust files, Chromium's policy trusting it, and Claude
// Code's login with placeholders — a copy of the guest's own (the share is
// read-only; a refresh Claude Code writes stays in the guest) bound over
// the host's credentials file wherever the guest could read it.
func secretsOutside(c *Config) error {
	if c.Trust {
		if err := os.MkdirAll(TrustInside, 0o755); err != nil {
			return err
		}
		if err := bind(filepath.Join(MetaDir, TrustDir), TrustInside, true); err != nil {
			return err
		}
		policies, _ := filepath.Glob(filepath.Join(MetaDir, ChromiumDir, "*.json"))
		for _, p := range policies {
			dst := filepath.Join(ChromiumPolicies, filepath.Base(p))
			if err := os.MkdirAll(ChromiumPolicies, 0o755); err != nil {
				return err
			}
			if err := copyFile(p, dst); err != nil {
				return err
			}
			if err := os.Chmod(dst, 0o644); err != nil {
				return err
			}
		}
	}
	if len(c.Login) == 0 {
		return nil
	}
	copied := filepath.Join(filepath.Dir(TrustInside), "claude-credentials.json")
	if err := os.MkdirAll(filepath.Dir(copied), 0o755); err != nil {
		return err
	}
	if err := copyFile(filepath.Join(MetaDir, LoginFile), copied); err != nil {
		return fmt.Errorf("copying Claude Code's login: %w", err)
	}
	if c.UID != 0 {
		if err := os.Lchown(copied, c.UID, c.GID); err != nil {
			return err
		}
	}
	for _, p := range c.Login {
		if _, err := os.Stat(p); err != nil {
			continue // not on this path: nothing to hide
		}
		if err := bind(copied, p, false); err != nil {
			return err
		}
	}
	return nil
}

// bind mounts src at dst; readOnly makes that mount read-only whatever src is.
func bind(src, dst string, readOnly bool) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("binding %s at %s: %w", src, dst, err)
	}
	if readOnly {
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", dst, err)
		}
	}
	return nil
}

// protect renders one protection mount. A mount point is never made in a
// share (that would write the host): the launcher's plan had the host
// make it first (launch.HostDir), and one still missing there is skipped
// for a bind (nothing to protect) and refused otherwise.
func protect(p Protect, c *Config) error {
	src := p.Source
	if src == "" {
		src = p.Path
	}
	switch p.Kind {
	case ProtectReadOnly, ProtectBind:
		st, err := os.Stat(src)
		if err != nil {
			return nil // absent on the host: nothing to protect
		}
		if err := mountPoint(p.Path, st.IsDir()); err != nil {
			return err
		}
		return bind(src, p.Path, p.Kind == ProtectReadOnly)
	case ProtectTmpfs, ProtectDir:
		if err := mountPoint(p.Path, true); err != nil {
			return err
		}
		mode := p.Mode
		if mode == 0 {
			mode = 0o755
		}
		flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
		if p.Kind == ProtectTmpfs {
			// A placeholder holds a name empty: read-only, so that not even
			// a guest user who is root (a root launcher's uid) fills it.
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount("tmpfs", p.Path, "tmpfs", flags, fmt.Sprintf("mode=%o,size=16m", mode)); err != nil {
			return err
		}
		if p.Kind == ProtectDir && c.UID != 0 {
			return os.Lchown(p.Path, c.UID, c.GID)
		}
		return nil
	case ProtectSymlink:
		if onShare(filepath.Dir(p.Path)) {
			return errors.New("a link inside a shared directory would be made on the host")
		}
		_ = os.Remove(p.Path)
		return os.Symlink(p.Source, p.Path)
	}
	return fmt.Errorf("unknown kind %q", p.Kind)
}

// mountPoint makes sure path exists to mount on: made only outside the
// shares (in the guest's own memory).
func mountPoint(path string, dir bool) error {
	if _, err := os.Lstat(path); err == nil {
		return nil
	}
	if onShare(filepath.Dir(path)) {
		return errors.New("missing on the host, and a share is the host's: not made from the guest")
	}
	if dir {
		return os.MkdirAll(path, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// File systems that are the host's: 9p and virtiofs (FUSE).
const (
	magic9p   = 0x01021997
	magicFUSE = 0x65735546
)

// onShare says whether the directory nearest path lies on a host share.
func onShare(path string) bool {
	for p := path; ; p = filepath.Dir(p) {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil {
			return st.Type == magic9p || st.Type == magicFUSE
		}
		if p == "/" {
			return false
		}
	}
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// addUser gives the run's uid an account: an existing entry of that uid
// keeps its name (a guest system account must not be taken over by a
// host user's name), a taken name becomes claude-sandbox-<uid>.
func addUser(c *Config) error {
	if c.UID == 0 {
		return nil
	}
	passwd, err := readColonFile("/etc/passwd")
	if err != nil {
		return err
	}
	for _, e := range passwd {
		if len(e) > 2 && e[2] == strconv.Itoa(c.UID) {
			c.User = e[0]
			return nil
		}
	}
	for _, e := range passwd {
		if e[0] == c.User {
			c.User = "claude-sandbox-" + strconv.Itoa(c.UID)
		}
	}
	groups, err := readColonFile("/etc/group")
	if err != nil {
		return err
	}
	gidTaken := false
	for _, e := range groups {
		if len(e) > 2 && e[2] == strconv.Itoa(c.GID) {
			gidTaken = true
		}
	}
	if !gidTaken {
		if err := appendLine("/etc/group", fmt.Sprintf("%s:x:%d:", c.User, c.GID)); err != nil {
			return err
		}
	}
	return appendLine("/etc/passwd", fmt.Sprintf("%s:x:%d:%d:claude-sandbox:%s:/bin/sh", c.User, c.UID, c.GID, c.Home))
}

func readColonFile(path string) ([][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := sc.Text(); line != "" {
			out = append(out, strings.Split(line, ":"))
		}
	}
	return out, sc.Err()
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// KioskDropIn is where the guest's kiosk unit (cage-tty1, templates/vm.nix)
// learns which user it runs as; it waits for this file.
const KioskDropIn = "/run/systemd/system/cage-tty1.service.d/claude-sandbox-user.conf"

// startKiosk starts Chromium's kiosk on the guest's display, as the
// sandbox user, when QEMU gave the guest one. Only the uid reaches the
// unit file.
func startKiosk(c *Config) {
	if _, err := os.Stat("/dev/dri/card0"); err != nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(KioskDropIn), 0o755); err != nil {
		return
	}
	if err := os.WriteFile(KioskDropIn, []byte(fmt.Sprintf("[Service]\nUser=%d\n", c.UID)), 0o644); err != nil {
		return
	}
	systemctl := "/run/current-system/sw/bin/systemctl"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = exec.CommandContext(ctx, systemctl, "daemon-reload").Run()
	_ = exec.CommandContext(ctx, systemctl, "start", "--no-block", "cage-tty1.service").Run()
}
