package launch

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/manifest"
	"golang.org/x/sys/unix"
)

// Invocation is a fully decided sandbox start: what to exec, with which
// arguments, environment and extra file descriptors.
type Invocation struct {
	Path string   `json:"path"`
	Args []string `json:"args"` // argv, Args[0] included
	Env  []string `json:"env"`
	// Files become descriptors 3, 4, … of the program, in order; Args name
	// them by those numbers.
	Files []*ExtraFile `json:"files,omitempty"`
}

// ExtraFile is one descriptor handed to the sandbox program: bwrap reads
// its seccomp filter and file copies from descriptors, never from paths the
// sandbox could race.
type ExtraFile struct {
	FD       int    `json:"fd"`
	What     string `json:"what"`
	Source   string `json:"source,omitempty"` // the host file it is a snapshot of
	Data     []byte `json:"data,omitempty"`   // its bytes, where they are not a secret
	file     *os.File
	argIndex int // where Args names its number
}

// Close releases the descriptors of an invocation that will not run.
func (inv *Invocation) Close() {
	for _, f := range inv.Files {
		if f.file != nil {
			f.file.Close()
		}
	}
}

// Command returns what runs inside the sandbox for this runtime.
func (rt *Runtime) command(m *manifest.Manifest) []string {
	switch {
	case len(rt.Command) > 0:
		return rt.Command
	case rt.Shell:
		return []string{m.Shell, "-l"}
	default:
		return []string{m.Claude}
	}
}

// Paths inside the sandbox.
const (
	sandboxTmuxDir = "/run/claude-sandbox/tmux"
	// TmuxSocketName is the tmux server's socket in the project state
	// directory's tmux/ (the host attaches with tmux -S).
	TmuxSocketName = "socket"
)

// The per-project state directory's layout (see ProjectStateDir).
var stateSubdirs = []string{"tmp", "local", "chromium", "tmux"}

// Bubblewrap builds the bwrap invocation. Mount order matters to bwrap:
// every tmpfs or directory comes before the binds placed inside it, so a
// project under /tmp or $HOME is laid over them, not hidden by them.
func Bubblewrap(m *manifest.Manifest, rt *Runtime) (inv *Invocation, err error) {
	env, err := SandboxEnv(m, rt)
	if err != nil {
		return nil, err
	}
	building := &Invocation{Path: m.Bwrap}
	inv = building
	defer func() {
		if err != nil {
			building.Close() // inv is nil by now
		}
	}()
	var a []string
	// addFile passes data as a descriptor, named by the argument after flag.
	addFile := func(flag, what, source string, data []byte, secret bool) error {
		f, err := bwrapMemFile(what, data)
		if err != nil {
			return err
		}
		x := &ExtraFile{FD: int(f.Fd()), What: what, Source: source, file: f}
		if !secret {
			x.Data = data
		}
		inv.Files = append(inv.Files, x)
		a = append(a, flag, strconv.Itoa(x.FD))
		x.argIndex = len(a) - 1
		return nil
	}

	a = []string{"bwrap",
		"--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
		"--hostname", "claude-sandbox",
		"--die-with-parent",
	}
	if !rt.Network {
		a = append(a, "--unshare-net")
	}
	if filter := TerminalFilter(); filter != nil {
		if err := addFile("--seccomp", "seccomp filter: no TIOCSTI/TIOCLINUX", "", filterBytes(filter), false); err != nil {
			return nil, err
		}
	}
	a = append(a, "--proc", "/proc", "--dev", "/dev")

	// /tmp: the project's own, kept between runs, when there is a state
	// directory (there always is, but for unit tests and --dry-run plans).
	if rt.StateDir != "" {
		if err := prepareProjectState(rt.StateDir); err != nil {
			return nil, err
		}
		a = append(a, "--bind", filepath.Join(rt.StateDir, "tmp"), "/tmp")
	} else {
		a = append(a, "--tmpfs", "/tmp")
	}
	a = append(a, "--tmpfs", "/home")
	if !strings.HasPrefix(rt.Home, "/home/") {
		a = append(a, "--tmpfs", rt.Home)
	}
	a = append(a, "--dir", rt.Home)
	a = append(a, "--ro-bind", manifest.StoreDir, manifest.StoreDir)
	for _, name := range m.HostEtc {
		host := filepath.Join("/etc", name)
		a = append(a, "--ro-bind-try", host, host)
	}
	// Who the user is: ssh, git and `id` ask getpwuid(). Synthesised with
	// the user alone rather than the host's files, which list every account.
	// machine-id: D-Bus clients read it.
	passwd, group := identityFiles(rt)
	for _, f := range []struct{ path, data string }{{"/etc/passwd", passwd}, {"/etc/group", group}} {
		a = append(a, "--perms", "0644")
		if err := addFile("--file", f.path, "", []byte(f.data), false); err != nil {
			return nil, err
		}
		a = append(a, f.path)
	}
	a = append(a, "--ro-bind-try", "/etc/machine-id", "/etc/machine-id")
	a = append(a,
		"--ro-bind", m.NixLd.Loader, m.NixLd.Path,
		"--symlink", m.Shell, "/bin/sh",
		"--symlink", m.Shell, "/bin/bash",
		"--symlink", m.UsrBinEnv, "/usr/bin/env",
	)

	// The sandbox's own runtime directory, then what the host forwards into it.
	host := osHost(rt)
	fwd := hostForwards(host, rt)
	a = append(a, "--perms", "0700", "--dir", sandboxRuntimeDir(host.uid))
	a = append(a, fwd.args...)

	// Chromium's managed policy, from the environment the closure built.
	policy := filepath.Join(m.Env, "etc/chromium/policies/managed")
	if st, err := os.Stat(policy); err == nil && st.IsDir() {
		a = append(a, "--ro-bind", policy, "/etc/chromium/policies/managed")
	}

	// The user's Claude Code state and tools' configuration.
	home := func(rel string) string { return filepath.Join(rt.Home, rel) }
	// ~/.claude holds the login: made in the user's own home if missing,
	// so a login inside the sandbox outlives it.
	if real, err := os.UserHomeDir(); err == nil && filepath.Clean(real) == rt.Home {
		_ = os.Mkdir(home(".claude"), 0o700)
	}
	if st, err := os.Stat(home(".claude")); err == nil && st.IsDir() {
		a = append(a, "--bind", home(".claude"), home(".claude"))
	}
	// ~/.claude.json is copied, never bound: Claude Code replaces it by
	// rename, which fails on a mount point, and a shared file would race
	// with a Claude Code running on the host.
	if data, err := snapshotFile(home(".claude.json")); err == nil {
		a = append(a, "--perms", "0600")
		if err := addFile("--file", "~/.claude.json", home(".claude.json"), data, true); err != nil {
			return nil, err
		}
		a = append(a, home(".claude.json"))
	}
	for _, rel := range []string{".gitconfig", ".config/git", ".config/gh", ".ssh"} {
		a = append(a, "--ro-bind-try", home(rel), home(rel))
	}
	if rt.StateDir != "" {
		a = append(a, "--bind", filepath.Join(rt.StateDir, "local"), home(".local"))
		a = append(a, "--bind", filepath.Join(rt.StateDir, "chromium"), home(".config/chromium"))
		a = append(a, "--bind", filepath.Join(rt.StateDir, "tmux"), sandboxTmuxDir)
	}

	a = append(a, "--bind", rt.Project, rt.Project)
	if rt.ProtectGit {
		a = append(a, protectGit(rt.Project)...)
	}
	a = append(a, "--chdir", rt.Project, "--")
	a = append(a, rt.command(m)...)
	inv.Args = a
	inv.Env = mergeEnv(env, fwd.env, map[string]string{"PATH": strings.Join(append(append([]string{}, m.Path...), home(".local/bin")), ":")})
	return inv, nil
}

// identityFiles returns /etc/passwd and /etc/group for the sandbox: root,
// the user (same uid and gid as outside) and nobody.
func identityFiles(rt *Runtime) (passwd, group string) {
	uid, gid := os.Getuid(), os.Getgid()
	groupName := rt.User
	if data, err := os.ReadFile("/etc/group"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Split(line, ":")
			if len(f) >= 3 && f[2] == strconv.Itoa(gid) && f[0] != "" {
				groupName = f[0]
				break
			}
		}
	}
	clean := func(s string) string { // a field must not break the format
		return strings.Map(func(r rune) rune {
			if r == ':' || r == '\n' {
				return '_'
			}
			return r
		}, s)
	}
	passwd = "root:x:0:0:root:/root:/bin/bash\n"
	group = "root:x:0:\n"
	if uid != 0 {
		passwd += fmt.Sprintf("%s:x:%d:%d::%s:/bin/bash\n", clean(rt.User), uid, gid, clean(rt.Home))
	}
	if gid != 0 {
		group += fmt.Sprintf("%s:x:%d:\n", clean(groupName), gid)
	}
	passwd += "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	group += "nogroup:x:65534:\n"
	return passwd, group
}

// prepareProjectState creates the state directory's subdirectories the sandbox
// binds (bwrap needs its bind sources to exist).
func prepareProjectState(dir string) error {
	for _, sub := range stateSubdirs {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return fmt.Errorf("preparing the project state directory: %w", err)
		}
	}
	return nil
}

// protectGit makes the project's .git/config and .git/hooks (and the
// submodules' under .git/modules) read-only, and .git itself a mount point,
// which can be neither renamed nor removed: otherwise the sandbox could move
// .git aside and put a new one with its own hooks in its place. Those are
// what run code on the host the next time the user runs git there.
func protectGit(project string) []string {
	git := filepath.Join(project, ".git")
	st, err := os.Lstat(git)
	if err != nil {
		return nil
	}
	if st.Mode().IsRegular() {
		// A linked worktree's .git file names its git directory: keep it.
		return []string{"--ro-bind", git, git}
	}
	if !st.IsDir() {
		return nil
	}
	// A missing hooks directory could be created inside and filled; git
	// itself always makes one, so making it here changes nothing for git.
	hooks := filepath.Join(git, "hooks")
	if _, err := os.Lstat(hooks); errors.Is(err, fs.ErrNotExist) {
		_ = os.Mkdir(hooks, 0o755)
	}
	args := []string{"--bind", git, git}
	for _, name := range []string{"config", "hooks", "modules"} {
		p := filepath.Join(git, name)
		if _, err := os.Lstat(p); err == nil {
			args = append(args, "--ro-bind", p, p)
		}
	}
	return args
}

// snapshot reads a file whole, checking that it did not change while being
// read (a writer rewriting it in place would otherwise give a torn copy;
// one replacing it by rename does not affect the open descriptor).
func snapshotFile(path string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		before, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		if !before.Mode().IsRegular() {
			f.Close()
			return nil, fmt.Errorf("%s is not a regular file", path)
		}
		data, err := io.ReadAll(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		after, err := f.Stat()
		f.Close()
		if err != nil {
			return nil, err
		}
		if (after.Size() == int64(len(data)) && after.ModTime().Equal(before.ModTime())) || attempt == 4 {
			return data, nil
		}
	}
}

// mergeEnv overlays maps of variables on a KEY=VALUE list, later ones
// winning, and returns it sorted.
func mergeEnv(base []string, overlays ...map[string]string) []string {
	m := make(map[string]string, len(base)+8)
	for _, kv := range base {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	for _, o := range overlays {
		for k, v := range o {
			m[k] = v
		}
	}
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// placeFiles makes each extra file's descriptor survive the exec. The
// descriptors keep their numbers: moving them onto 3, 4, … could close one
// the Go runtime still uses (its epoll descriptor) just before the exec.
func placeFiles(files []*ExtraFile) error {
	for _, f := range files {
		if f.file == nil {
			return fmt.Errorf("descriptor %d (%s) was already released", f.FD, f.What)
		}
		if _, err := unix.FcntlInt(f.file.Fd(), unix.F_SETFD, 0); err != nil {
			return err
		}
	}
	return nil
}

// Portable returns the invocation renumbered as a program started with its
// Files as descriptors 3, 4, … in order would see it (os/exec's
// ExtraFiles): what --dry-run prints, runnable by hand.
func (inv *Invocation) Portable() *Invocation {
	out := *inv
	out.Args = append([]string(nil), inv.Args...)
	out.Files = nil
	for i, f := range inv.Files {
		g := *f
		g.FD = 3 + i
		if f.argIndex > 0 && f.argIndex < len(out.Args) {
			out.Args[f.argIndex] = strconv.Itoa(g.FD)
		}
		out.Files = append(out.Files, &g)
	}
	return &out
}

// Open returns a readable copy of an extra file's content for a program
// started by hand from a Portable invocation.
func (f *ExtraFile) Open() (*os.File, error) {
	if f.Data != nil {
		return bwrapMemFile(f.What, f.Data)
	}
	if f.Source != "" {
		data, err := snapshotFile(f.Source)
		if err != nil {
			return nil, err
		}
		return bwrapMemFile(f.What, data)
	}
	return nil, fmt.Errorf("descriptor %d (%s) has no content to reproduce", f.FD, f.What)
}
