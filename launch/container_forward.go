package launch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// What the container gets from the host beyond the project and the store:
// the same resources as the bubblewrap backend (hostForwards decides them
// for both: display, audio, buses, keyring, GPU, SSH agent, Nix daemon),
// the user's Claude Code state and tool configuration, and the project's
// persistent state directory. Written here as nspawn arguments.

// claudeJSONInside is where the host's ~/.claude.json is mounted for the
// init to copy into the home (a copy, as bubblewrap makes one: Claude Code
// replaces the file by rename, which fails on a mount point).
const claudeJSONInside = "/run/claude-sandbox/claude.json"

type containerMounts struct {
	args []string
	env  map[string]string
}

func (c *containerMounts) bind(readOnly bool, src, dst string) {
	flag := "--bind="
	if readOnly {
		flag = "--bind-ro="
	}
	c.args = append(c.args, flag+nspawnPath(src)+":"+nspawnPath(dst))
}

// nspawnFromBwrap turns bubblewrap mount arguments into nspawn's. A bind
// whose source is missing is left out, as bwrap's -try variants do.
func nspawnFromBwrap(args []string, exists func(string) bool) ([]string, bool, error) {
	var out []string
	devices := false
	for i := 0; i < len(args); {
		switch flag := args[i]; flag {
		case "--bind", "--bind-try", "--ro-bind", "--ro-bind-try", "--dev-bind", "--dev-bind-try":
			if i+2 >= len(args) {
				return nil, false, fmt.Errorf("%s without source and destination", flag)
			}
			src, dst := args[i+1], args[i+2]
			i += 3
			if strings.HasSuffix(flag, "-try") && !exists(src) {
				continue
			}
			kind := "--bind="
			if strings.HasPrefix(flag, "--ro-") {
				kind = "--bind-ro="
			}
			if strings.HasPrefix(flag, "--dev-") {
				devices = true
			}
			out = append(out, kind+nspawnPath(src)+":"+nspawnPath(dst))
		case "--tmpfs":
			if i+1 >= len(args) {
				return nil, false, fmt.Errorf("--tmpfs without a path")
			}
			out = append(out, "--tmpfs="+nspawnPath(args[i+1]))
			i += 2
		default:
			return nil, false, fmt.Errorf("no nspawn equivalent for the bubblewrap argument %q", flag)
		}
	}
	return out, devices, nil
}

// containerForwards decides the container's mounts and variables beyond
// the project, the store and the /etc allowlist.
func containerForwards(m *manifest.Manifest, rt *Runtime, u containerUser, h containerHost) (containerMounts, error) {
	c := containerMounts{env: map[string]string{}}
	inner := *rt
	inner.Home = u.Home
	view := hostView{lookupEnv: rt.lookupEnv, stat: os.Stat, uid: u.UID}
	fwd := hostForwards(view, &inner)
	run := sandboxRuntimeDir(u.UID)
	// The user's runtime directory, theirs to write in; the sockets go in it.
	c.args = append(c.args, fmt.Sprintf("--tmpfs=%s:mode=0700,uid=%d,gid=%d", nspawnPath(run), u.UID, u.GID))
	args, devices, err := nspawnFromBwrap(fwd.args, h.Exists)
	if err != nil {
		return c, err
	}
	c.args = append(c.args, args...)
	if devices && h.Systemd {
		// nspawn's scope allows only the basic device nodes; the GPU's
		// render nodes are character devices of the drm class.
		c.args = append(c.args, "--property=DeviceAllow=char-drm rw")
	}
	for k, v := range fwd.env {
		c.env[k] = v
	}

	// Chromium's managed policy, from the closure.
	policy := filepath.Join(m.Env, "etc/chromium/policies/managed")
	if st, err := os.Stat(policy); err == nil && st.IsDir() {
		c.bind(true, policy, "/etc/chromium/policies/managed")
	}

	// The user's Claude Code state (read-write) and tools' configuration
	// (read-only).
	home := func(rel string) string { return filepath.Join(u.Home, rel) }
	if err := ensureUserDir(u.Home, ".claude", u); err == nil {
		c.bind(false, home(".claude"), home(".claude"))
	}
	if st, err := os.Stat(home(".claude.json")); err == nil && st.Mode().IsRegular() {
		c.bind(true, home(".claude.json"), claudeJSONInside)
	}
	for _, rel := range []string{".gitconfig", ".config/git", ".config/gh", ".ssh"} {
		if h.Exists(home(rel)) {
			c.bind(true, home(rel), home(rel))
		}
	}

	// The project's state: persistent /tmp, ~/.local/{bin,lib,share}, the
	// browser profile and the tmux socket, as in the bubblewrap backend.
	// Made by root under root's state directory, then given to the user.
	if rt.StateDir != "" {
		if err := prepareProjectState(rt.StateDir); err != nil {
			return c, err
		}
		for _, sub := range stateSubdirs {
			p := filepath.Join(rt.StateDir, sub)
			if err := os.Lchown(p, u.UID, u.GID); err != nil {
				return c, fmt.Errorf("preparing the project state directory: %w", err)
			}
		}
		c.bind(false, filepath.Join(rt.StateDir, "tmp"), "/tmp")
		c.bind(false, filepath.Join(rt.StateDir, "local"), home(".local"))
		c.bind(false, filepath.Join(rt.StateDir, "chromium"), home(".config/chromium"))
		c.bind(false, filepath.Join(rt.StateDir, "tmux"), sandboxTmuxDir)
	}

	if rt.ProtectGit {
		args, _, err := nspawnFromBwrap(protectGit(rt.Project), h.Exists)
		if err != nil {
			return c, err
		}
		c.args = append(c.args, args...)
	}
	return c, nil
}

// ensureUserDir makes home/rel a directory of the user's, as root, without
// following a symlink the user could have put in its place.
func ensureUserDir(home, rel string, u containerUser) error {
	p := filepath.Join(home, rel)
	st, err := os.Lstat(p)
	switch {
	case err == nil && st.IsDir():
		return nil
	case err == nil:
		return fmt.Errorf("%s is not a directory", p)
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if st, err := os.Stat(home); err != nil || !st.IsDir() {
		return fmt.Errorf("no home directory %s", home)
	}
	if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return os.Lchown(p, u.UID, u.GID)
}

// copyClaudeJSON is the init's half of the ~/.claude.json copy.
func copyClaudeJSON(s initSpec) {
	data, err := os.ReadFile(claudeJSONInside)
	if err != nil {
		return
	}
	dst := filepath.Join(s.Home, ".claude.json")
	if err := os.WriteFile(dst, data, 0o600); err == nil {
		_ = os.Lchown(dst, s.UID, s.GID)
	}
}
