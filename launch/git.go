package launch

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// ProtectGit makes the project's .git/config and .git/hooks (and the
// submodules' under .git/modules) read-only, and .git itself a mount point,
// which can be neither renamed nor removed: otherwise the sandbox could move
// .git aside and put a new one with its own hooks in its place. Those are
// what run code on the host the next time the user runs git there.
//
// A missing hooks directory could be created inside and filled: Start
// creates it (given to owner when set); git itself always makes one, so
// making it changes nothing for git.
func ProtectGit(project string, owner *Owner) ([]Mount, []HostDir) {
	git := filepath.Join(project, ".git")
	st, err := os.Lstat(git)
	if err != nil {
		return nil, nil
	}
	if st.Mode().IsRegular() {
		// A linked worktree's .git file names its git directory: keep it.
		return []Mount{{Kind: ROBind, Source: git, Dest: git}}, nil
	}
	if !st.IsDir() {
		return nil, nil
	}
	mounts := []Mount{{Kind: Bind, Source: git, Dest: git}}
	var prepare []HostDir
	for _, name := range []string{"config", "hooks", "modules"} {
		p := filepath.Join(git, name)
		_, err := os.Lstat(p)
		if name == "hooks" && errors.Is(err, fs.ErrNotExist) {
			prepare = append(prepare, HostDir{Path: p, Mode: 0o755, Owner: owner})
			err = nil
		}
		if err == nil {
			mounts = append(mounts, Mount{Kind: ROBind, Source: p, Dest: p})
		}
	}
	return mounts, prepare
}
