package launch

import (
	"os"
	"path/filepath"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// The user's own files a sandbox gets: Claude Code's ~/.claude (its
// records read-write, its configuration read-only: ClaudeHome), its
// ~/.claude.json (a copy), the tools' configuration (read-only) and
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

// UserMounts are the mounts of the user's files, in order, the
// directories Start must create for them, and what of them is protected.
func UserMounts(m *manifest.Manifest, u UserFiles, rt *Runtime) ([]Mount, []HostDir, []Protected) {
	var mounts []Mount
	home := func(rel string) string { return filepath.Join(u.Home, rel) }

	// Chromium's managed policy, from the environment the closure built:
	// a link into the read-only store (as NixOS's /etc has it), which
	// costs the launch less than a bind.
	policy := filepath.Join(m.Env, "etc/chromium/policies/managed")
	if st, err := os.Stat(policy); err == nil && st.IsDir() {
		mounts = append(mounts, Mount{Kind: Symlink, Source: policy, Dest: "/etc/chromium/policies/managed"})
	}

	// ~/.claude holds the login and the history: made in the user's home
	// if missing, so that they outlive the sandbox.
	claude, prepare, protected := ClaudeHome(u, rt)
	mounts = append(mounts, claude...)

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
	return mounts, prepare, protected
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
