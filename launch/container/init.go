package container

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
)

// The inside of a container: this same binary, bind-mounted read-only at
// InitPath, runs as the container's PID 1. It finishes the root
// (the tmpfs nspawn gave it): /etc from the NixOS system plus a passwd and
// group naming the invoking user, /run/current-system. Then it says "ready"
// on its standard output and keeps the container: it reaps orphans and
// reads its standard input, the lifetime pipe the sandbox's supervisor
// holds, until end of file (the container ends at once) or "stop" (every
// process is asked to end first). It dies with nspawn (PR_SET_PDEATHSIG).
//
// Every session runs it a second way, with --join, after nsenter put it
// into the container's namespaces: it drops to the user (no PAM, no
// setpriv: plain setgroups/setgid/setuid) and executes the command.

// InitPath is where the launcher binds this binary in the container; the
// binary runs as the container side (Init) when started under this name,
// which nothing else uses.
const InitPath = "/run/claude-sandbox/init"

// initSpec is the init's command line, built by render.
type initSpec struct {
	UID, GID int
	Groups   []containerGroup
	User     string
	Home     string
	Cwd      string
	Toplevel string
	TTY      bool // --join: fd 0 is a terminal made for this session: make it the command's
	Join     bool
	Keep     bool // the container's keeper: no command of its own
	Command  []string
	// Copies are the plan's File mounts: the source is bound at
	// copyStaging+index, the init copies it to Dest, the user's.
	Copies []fileCopy
	// Links are the plan's Symlink mounts, made by the init.
	Links []symlink
}

// symlink is a symbolic link the init makes (--symlink=LEN:TARGETDEST:
// the target's length first, since either path may hold any character).
type symlink struct{ Target, Dest string }

// fileCopy is a file the init copies into place (--copy=MODE:DEST).
type fileCopy struct {
	Dest string
	Mode os.FileMode
}

func (s initSpec) args() []string {
	groups := make([]string, len(s.Groups))
	for i, g := range s.Groups {
		groups[i] = fmt.Sprintf("%d:%s", g.GID, g.Name)
	}
	a := []string{InitPath,
		"--uid=" + strconv.Itoa(s.UID), "--gid=" + strconv.Itoa(s.GID),
		"--groups=" + strings.Join(groups, ","), "--cwd=" + s.Cwd,
	}
	if s.Join {
		a = append(a, "--join")
	} else {
		if s.Keep {
			a = append(a, "--keep")
		}
		a = append(a, "--user="+s.User, "--home="+s.Home, "--toplevel="+s.Toplevel)
	}
	if s.TTY {
		a = append(a, "--tty")
	}
	for _, c := range s.Copies {
		a = append(a, fmt.Sprintf("--copy=%04o:%s", c.Mode, c.Dest))
	}
	for _, l := range s.Links {
		a = append(a, fmt.Sprintf("--symlink=%d:%s%s", len(l.Target), l.Target, l.Dest))
	}
	return append(append(a, "--"), s.Command...)
}

func parseInitSpec(args []string) (initSpec, error) {
	var s initSpec
	var groups string
	var copies []string
	fs := flag.NewFlagSet("claude-sandbox container init", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.IntVar(&s.UID, "uid", -1, "")
	fs.IntVar(&s.GID, "gid", -1, "")
	fs.StringVar(&groups, "groups", "", "")
	fs.StringVar(&s.User, "user", "", "")
	fs.StringVar(&s.Home, "home", "", "")
	fs.StringVar(&s.Cwd, "cwd", "/", "")
	fs.StringVar(&s.Toplevel, "toplevel", "", "")
	fs.BoolVar(&s.TTY, "tty", false, "")
	fs.BoolVar(&s.Join, "join", false, "")
	fs.BoolVar(&s.Keep, "keep", false, "")
	fs.Func("copy", "", func(v string) error { copies = append(copies, v); return nil })
	fs.Func("symlink", "", func(v string) error {
		n, rest, _ := strings.Cut(v, ":")
		l, err := strconv.Atoi(n)
		if err != nil || l <= 0 || l >= len(rest) || !filepath.IsAbs(rest[:l]) || !filepath.IsAbs(rest[l:]) {
			return fmt.Errorf("bad symlink %q", v)
		}
		s.Links = append(s.Links, symlink{Target: rest[:l], Dest: rest[l:]})
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	for _, c := range copies {
		mode, dest, _ := strings.Cut(c, ":")
		m, err := strconv.ParseUint(mode, 8, 32)
		if err != nil || !filepath.IsAbs(dest) {
			return s, fmt.Errorf("bad copy %q", c)
		}
		s.Copies = append(s.Copies, fileCopy{Dest: dest, Mode: os.FileMode(m).Perm()})
	}
	s.Command = fs.Args()
	if s.UID < 0 || s.GID < 0 || (len(s.Command) == 0) != s.Keep {
		return s, errors.New("needs --uid, --gid and a command, or --keep")
	}
	for _, g := range strings.Split(groups, ",") {
		if g == "" {
			continue
		}
		id, name, _ := strings.Cut(g, ":")
		gid, err := strconv.Atoi(id)
		if err != nil || !containerSafeName.MatchString(name) {
			return s, fmt.Errorf("bad group %q", g)
		}
		s.Groups = append(s.Groups, containerGroup{GID: gid, Name: name})
	}
	return s, nil
}

// Init is the container side's main (this binary started as InitPath);
// it returns the exit status.
func Init(args []string) int {
	s, err := parseInitSpec(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "claude-sandbox (container init): %v\n", err)
		return 125
	}
	if s.Join {
		return joinContainer(s)
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "claude-sandbox (container init): not the container's PID 1")
		return 125
	}
	// First: if nspawn is gone already, or goes while we set up, so do we.
	_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
	if err := setupContainerRoot(s); err != nil {
		fmt.Fprintf(os.Stderr, "claude-sandbox (container init): %v\n", err)
		return 125
	}
	return keepContainer()
}

// setupContainerRoot writes what the tmpfs root lacks. Entries nspawn
// already mounted (the host's /etc allowlist) are left as they are.
func setupContainerRoot(s initSpec) error {
	if err := os.MkdirAll("/etc", 0o755); err != nil {
		return err
	}
	passwd := "root:x:0:0:System administrator:/root:/bin/bash\n" +
		"nobody:x:65534:65534:Unprivileged account:/var/empty:/bin/false\n"
	if s.UID != 0 && s.UID != 65534 {
		passwd += fmt.Sprintf("%s:x:%d:%d::%s:/bin/bash\n", s.User, s.UID, s.GID, s.Home)
	}
	group := "root:x:0:\nnogroup:x:65534:\n"
	for i, g := range s.Groups {
		if g.GID == 0 || g.GID == 65534 {
			continue
		}
		members := s.User
		if i == 0 {
			members = "" // the primary group, named in passwd
		}
		group += fmt.Sprintf("%s:x:%d:%s\n", g.Name, g.GID, members)
	}
	files := map[string]string{"passwd": passwd, "group": group}
	if uuid := strings.ReplaceAll(os.Getenv("container_uuid"), "-", ""); len(uuid) == 32 {
		files["machine-id"] = uuid + "\n"
	}
	for name, content := range files {
		if err := os.WriteFile("/etc/"+name, []byte(content), 0o644); err != nil {
			return err
		}
	}
	// /etc from the NixOS system ($toplevel/etc, environment.etc), each entry
	// linked into the store as NixOS's activation links it (through
	// /etc/static there; directly here, since a host's /etc/static may be
	// mounted in). An entry with a .mode file is copied with that mode.
	etc := filepath.Join(s.Toplevel, "etc")
	entries, err := os.ReadDir(etc)
	if err != nil {
		return fmt.Errorf("reading the system's /etc: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".mode") || strings.HasSuffix(name, ".uid") || strings.HasSuffix(name, ".gid") {
			continue
		}
		if _, err := os.Lstat("/etc/" + name); err == nil {
			continue
		}
		if mode, err := os.ReadFile(filepath.Join(etc, name+".mode")); err == nil {
			if m, err := strconv.ParseUint(strings.TrimSpace(string(mode)), 8, 32); err == nil {
				if data, err := os.ReadFile(filepath.Join(etc, name)); err == nil {
					if err := os.WriteFile("/etc/"+name, data, os.FileMode(m)); err != nil {
						return err
					}
					continue
				}
			}
		}
		if err := os.Symlink(filepath.Join(etc, name), "/etc/"+name); err != nil {
			return err
		}
	}
	if err := os.MkdirAll("/run", 0o755); err != nil {
		return err
	}
	if err := os.Symlink(s.Toplevel, "/run/current-system"); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := os.MkdirAll("/var/tmp", 0o1777); err == nil {
		_ = os.Chmod("/var/tmp", 0o1777)
	}
	giveHomeDirs(s)
	copyFiles(s)
	makeLinks(s)
	return nil
}

// makeLinks makes the plan's symbolic links, the user's (as bubblewrap
// makes them as the user). One that cannot be made is left out.
func makeLinks(s initSpec) {
	for _, l := range s.Links {
		_ = os.MkdirAll(filepath.Dir(l.Dest), 0o755)
		if err := os.Symlink(l.Target, l.Dest); err == nil {
			_ = os.Lchown(l.Dest, s.UID, s.GID)
		}
	}
}

// copyFiles puts the plan's file copies in place, the user's (a copy, as
// bubblewrap makes one: Claude Code replaces ~/.claude.json by rename,
// which fails on a mount point). A copy that cannot be made is left out,
// as bubblewrap leaves out a file it cannot read.
func copyFiles(s initSpec) {
	for i, c := range s.Copies {
		data, err := os.ReadFile(copyStaging + strconv.Itoa(i))
		if err != nil {
			continue
		}
		mode := c.Mode
		if mode == 0 {
			mode = 0o600
		}
		// A directory the system's /etc lacks (/etc/nix where the system
		// configures no Nix) is made, root's; one the system links into
		// the store stays the system's.
		_ = os.MkdirAll(filepath.Dir(c.Dest), 0o755)
		if err := os.WriteFile(c.Dest, data, mode); err == nil {
			_ = os.Lchown(c.Dest, s.UID, s.GID)
		}
	}
}

// giveHomeDirs hands the user the directories nspawn made in their home
// tmpfs as parents of mount points (~/.config for ~/.config/chromium…):
// made by root, they would keep the user from creating anything beside
// those mounts. Mounted directories themselves are left as they are.
func giveHomeDirs(s initSpec) {
	var home unix.Stat_t
	if err := unix.Lstat(s.Home, &home); err != nil || s.UID == 0 {
		return
	}
	_ = filepath.WalkDir(s.Home, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Dev != home.Dev {
			return filepath.SkipDir // another file system: a mount, not ours to change
		}
		if st.Uid == 0 {
			_ = os.Lchown(p, s.UID, s.GID)
		}
		return nil
	})
}

// stopGrace is how long a "stop" lets the container's processes end.
const stopGrace = 5 * time.Second

// keepContainer is the init's life once the root is set up: it says
// "ready", reaps every orphan, and ends the container when its lifetime
// pipe says so — at once on end of file, or after asking every process to
// end on "stop" (and on SIGTERM, nspawn's own way of asking).
func keepContainer() int {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	if _, err := os.Stdout.WriteString("ready\n"); err != nil {
		return 125
	}
	lifetime := make(chan string, 2)
	go func() {
		r := bufio.NewReader(os.Stdin)
		for {
			line, err := r.ReadString('\n')
			if strings.TrimSpace(line) == "stop" {
				lifetime <- "stop"
			}
			if err != nil {
				lifetime <- "eof"
				return
			}
		}
	}()
	stopping := false
	var grace <-chan time.Time
	for {
		select {
		case what := <-lifetime:
			if what == "eof" {
				return 0 // the kernel ends every process of the container with its init
			}
			if !stopping {
				stopping, grace = true, askEveryoneToEnd()
			}
		case sig := <-sigs:
			if sig != unix.SIGCHLD {
				if !stopping {
					stopping, grace = true, askEveryoneToEnd()
				}
				continue
			}
			for {
				var ws unix.WaitStatus
				wpid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
				if wpid <= 0 || err != nil {
					break
				}
			}
			if stopping && onlyInitLeft() {
				return 0
			}
		case <-grace:
			return 0
		}
	}
}

// askEveryoneToEnd sends every other process of the container SIGHUP and
// SIGTERM (a closing terminal, then a polite request) and starts the grace.
func askEveryoneToEnd() <-chan time.Time {
	_ = unix.Kill(-1, unix.SIGHUP)
	_ = unix.Kill(-1, unix.SIGTERM)
	return time.After(stopGrace)
}

// onlyInitLeft says whether this init is the container's last process.
func onlyInitLeft() bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != 1 {
			return false
		}
	}
	return true
}

// containerPayloadEnv drops what nspawn adds for an init (its notification socket,
// the host's OS identity); what the launcher passed stays.
func containerPayloadEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if name == "NOTIFY_SOCKET" || strings.HasPrefix(name, "LISTEN_") || strings.HasPrefix(name, "container_host_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func initLookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", errors.New("command not found")
	}
	return p, nil
}

// joinContainer is `enter` inside the container: a new session (so a host
// terminal it was handed is not its controlling terminal, and TIOCSTI into it
// fails), the pty made for it as controlling terminal when there is one,
// the init's capability bound, then the user's ids and the command.
func joinContainer(s initSpec) int {
	_, _ = unix.Setsid()
	if s.TTY {
		_ = unix.IoctlSetInt(0, unix.TIOCSCTTY, 0)
		_ = unix.Fchown(0, s.UID, s.GID)
	}
	// syscall's set*id and setgroups apply to every thread of this process.
	if err := boundCapabilitiesLikeInit(); err != nil {
		fmt.Fprintf(os.Stderr, "claude-sandbox (enter): %v\n", err)
		return 125
	}
	if err := syscall.Setgroups(containerGIDInts(s.Groups)); err != nil {
		fmt.Fprintf(os.Stderr, "claude-sandbox (enter): setgroups: %v\n", err)
		return 125
	}
	if err := syscall.Setresgid(s.GID, s.GID, s.GID); err != nil {
		fmt.Fprintf(os.Stderr, "claude-sandbox (enter): setresgid: %v\n", err)
		return 125
	}
	if err := syscall.Setresuid(s.UID, s.UID, s.UID); err != nil {
		fmt.Fprintf(os.Stderr, "claude-sandbox (enter): setresuid: %v\n", err)
		return 125
	}
	// After the namespaces are entered, not before (nsenter --wd): a cwd
	// taken from the host's view leaves getcwd(2) failing inside.
	if err := os.Chdir(s.Cwd); err != nil {
		fmt.Fprintf(os.Stderr, "claude-sandbox (enter): %v; starting in /\n", err)
		_ = os.Chdir("/")
	}
	path, err := initLookPath(s.Command[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "claude-sandbox: %s: %v\n", s.Command[0], err)
		return 127
	}
	err = unix.Exec(path, s.Command, os.Environ())
	fmt.Fprintf(os.Stderr, "claude-sandbox: %s: %v\n", s.Command[0], err)
	return 126
}

func containerGIDInts(gs []containerGroup) []int {
	out := make([]int, len(gs))
	for i, g := range gs {
		out[i] = g.GID
	}
	return out
}

// boundCapabilitiesLikeInit drops from the bounding set what the container's
// init lacks (nspawn restricted it): a process that nsenter put in arrives
// with all of the host root's capabilities.
func boundCapabilitiesLikeInit() error {
	st, err := proc.ReadStatus(1)
	if err != nil {
		return fmt.Errorf("reading the container's capabilities: %w", err)
	}
	for c := 0; c < 64; c++ {
		if st.CapBnd&(1<<c) == 0 {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("dropping capability %d: %w", c, err)
			}
		}
	}
	return nil
}
