package launch

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// The user's own files a sandbox gets: Claude Code's state (read-write),
// its ~/.claude.json (a copy), the tools' configuration (read-only) and
// Chromium's managed policy from the closure.

// Dotfiles are the host home's configuration files a sandbox sees,
// read-only, where they exist.
// ~/.ssh is not one: only its public part is (sshMounts).
var Dotfiles = []string{".gitconfig", ".config/git", ".config/gh"}

// UserFiles says where a sandbox's user lives and what it may create there.
type UserFiles struct {
	Home string // the user's home directory on the host, the same path inside
	// MayCreate: Start may create ~/.claude in Home (the launching user's
	// own home, or one a root launcher creates for the user).
	MayCreate bool
	// Owner is who a root launcher creates directories for (nil: this
	// process's user). Then a symlink in the user's home is never followed.
	Owner *Owner
}

// UserMounts are the mounts of the user's files, in order, and the
// directories Start must create for them.
func UserMounts(m *manifest.Manifest, u UserFiles) ([]Mount, []HostDir) {
	var mounts []Mount
	var prepare []HostDir
	home := func(rel string) string { return filepath.Join(u.Home, rel) }

	// Chromium's managed policy, from the environment the closure built.
	policy := filepath.Join(m.Env, "etc/chromium/policies/managed")
	if st, err := os.Stat(policy); err == nil && st.IsDir() {
		mounts = append(mounts, Mount{Kind: ROBind, Source: policy, Dest: "/etc/chromium/policies/managed"})
	}

	// ~/.claude holds the login: made in the user's home if missing, so a
	// login inside the sandbox outlives it.
	claude := home(".claude")
	switch st, err := os.Lstat(claude); {
	case err == nil && st.IsDir():
		mounts = append(mounts, Mount{Kind: Bind, Source: claude, Dest: claude})
	case errors.Is(err, fs.ErrNotExist) && u.MayCreate && isDir(u.Home):
		prepare = append(prepare, HostDir{Path: claude, Mode: 0o700, Owner: u.Owner})
		mounts = append(mounts, Mount{Kind: Bind, Source: claude, Dest: claude})
	case err == nil && u.Owner == nil && isDir(claude):
		// A symlink to a directory (a dotfiles manager's): the user's own
		// to follow, never a root launcher's.
		mounts = append(mounts, Mount{Kind: Bind, Source: claude, Dest: claude})
	}

	// ~/.claude.json is copied, never bound: Claude Code replaces it by
	// rename, which fails on a mount point, and a shared file would race
	// with a Claude Code running on the host.
	if st, err := os.Stat(home(".claude.json")); err == nil && st.Mode().IsRegular() {
		mounts = append(mounts, Mount{Kind: File, Source: home(".claude.json"), Dest: home(".claude.json"), Mode: 0o600, Secret: true, Optional: true})
	}
	for _, rel := range Dotfiles {
		mounts = append(mounts, Mount{Kind: ROBind, Source: home(rel), Dest: home(rel), Optional: true})
	}
	mounts = append(mounts, sshMounts(home(".ssh"), u.Owner)...)
	return mounts, prepare
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
