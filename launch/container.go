package launch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// The container (systemd-nspawn) backend.
//
// The root is `--volatile=yes`: a tmpfs nspawn creates in the container's
// own mount namespace, with the closure's root tree mounted read-only at
// /usr. Nothing of it is on disk, so nothing is left to clean when the
// container ends, however it ends: the init (container_init.go) dies with
// nspawn, and the namespace and its tmpfs go with the last process. Before
// nspawn runs, the launcher also gives it a private tmpfs at
// /run/systemd/nspawn, where nspawn keeps per-machine directories it cannot
// always remove itself (it refuses to delete them on a disk-backed /run,
// and a SIGKILLed nspawn removes nothing).

// containerHost is what a launch needs from the host, found once per launch
// (detectContainerHost) and injectable in tests.
type containerHost struct {
	Nspawn   string            // the host's systemd-nspawn
	Self     string            // this binary, bound into the container as its init
	Systemd  bool              // systemd is PID 1: register the machine with machined
	Terminal bool              // stdin and stdout are terminals: nspawn gives the container a pty
	Exists   func(string) bool // host paths (the /etc allowlist)
}

func detectContainerHost() (containerHost, error) {
	nspawn, err := findNspawn()
	if err != nil {
		return containerHost{}, err
	}
	self, err := selfExecutable()
	if err != nil {
		return containerHost{}, err
	}
	return containerHost{
		Nspawn:   nspawn,
		Self:     self,
		Systemd:  systemdRuns(),
		Terminal: fdIsTerminal(0) && fdIsTerminal(1),
		Exists:   func(p string) bool { _, err := os.Stat(p); return err == nil },
	}, nil
}

func fdIsTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

var notHostName = regexp.MustCompile(`[^a-z0-9]+`)

// MachineName is the nspawn machine name of a container: what
// `machinectl list` shows where systemd runs. A host name (letters, digits,
// dashes), with the project's name in it to tell containers apart.
func MachineName(project, id string) string {
	base := strings.ToLower(filepath.Base(project))
	base = notHostName.ReplaceAllString(base, "-")
	base = strings.Trim(base, "-")
	if len(base) > 24 {
		base = strings.Trim(base[:24], "-")
	}
	if base == "" {
		return "claude-" + id
	}
	return "claude-" + base + "-" + id
}

// nspawnPath escapes a path for nspawn's colon-separated mount arguments
// (--bind=SRC:DST, --tmpfs=PATH:OPTS), where backslash escapes are decoded.
func nspawnPath(p string) string {
	return strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(p)
}

func planContainer(m *manifest.Manifest, rt *Runtime) (*Invocation, error) {
	h, err := detectContainerHost()
	if err != nil {
		return nil, err
	}
	inv, _, err := containerInvocation(m, rt, h, NewRecordID())
	return inv, err
}

// containerInvocation decides the whole nspawn command: its argv (no secret
// in it: the payload's variables are named with --setenv=NAME and their
// values taken from nspawn's own environment) and that environment.
func containerInvocation(m *manifest.Manifest, rt *Runtime, h containerHost, id string) (*Invocation, string, error) {
	for _, name := range rt.ExtraEnv {
		if containerEnvDenied(name) {
			return nil, "", &ContainerEnvError{Name: name}
		}
	}
	u, err := invokingUser(rt)
	if err != nil {
		return nil, "", err
	}
	inner := *rt
	inner.User, inner.Home = u.Name, u.Home
	env, err := SandboxEnv(m, &inner)
	if err != nil {
		return nil, "", err
	}
	machine := MachineName(rt.Project, id)

	a := []string{"systemd-nspawn", "--quiet",
		"--directory=" + m.Container.Root, "--volatile=yes",
		"--machine=" + machine, "--hostname=" + m.Container.HostName,
		// /etc is the init's to fill; the host's resolv.conf and time zone
		// come in through the /etc allowlist like every other host file.
		"--resolv-conf=off", "--timezone=off", "--link-journal=no",
		// nspawn's orderly shutdown (SIGTERM, a closed terminal) reaches the
		// payload through the init, which forwards it.
		"--kill-signal=SIGTERM",
	}
	if !h.Systemd {
		// No systemd to register with or to ask for a scope.
		a = append(a, "--register=no", "--keep-unit")
	}
	if !rt.Network {
		a = append(a, "--private-network")
	}
	a = append(a, "--bind-ro="+manifest.StoreDir)
	for _, name := range m.HostEtc {
		p := "/etc/" + name
		if h.Exists(p) {
			a = append(a, "--bind-ro="+nspawnPath(p))
		}
	}
	fwd, err := containerForwards(m, rt, u, h)
	if err != nil {
		return nil, "", err
	}
	a = append(a, fwd.args...)
	a = append(a, "--bind="+nspawnPath(rt.Project)+":"+nspawnPath(rt.Project))
	// An empty home of the user's own; nspawn mounts it before the project,
	// should the project lie inside it. A home inside the project is the
	// project's.
	if u.Home != rt.Project && !strings.HasPrefix(u.Home, rt.Project+"/") {
		a = append(a, fmt.Sprintf("--tmpfs=%s:mode=0700,uid=%d,gid=%d", nspawnPath(u.Home), u.UID, u.GID))
	}
	a = append(a, "--bind-ro="+nspawnPath(h.Self)+":"+ContainerInitPath)
	if h.Terminal {
		a = append(a, "--console=interactive")
	} else {
		a = append(a, "--console=pipe")
	}
	env = mergeEnv(env, fwd.env, map[string]string{
		"PATH": strings.Join(append(append([]string{}, m.Path...), filepath.Join(u.Home, ".local/bin")), ":"),
	})
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		a = append(a, "--setenv="+name)
	}
	spec := initSpec{
		UID: u.UID, GID: u.GID, Groups: u.Groups, User: u.Name, Home: u.Home,
		Cwd: rt.Project, Toplevel: m.Container.Toplevel, TTY: h.Terminal,
		Command: rt.command(m),
	}
	a = append(a, "--")
	a = append(a, spec.args()...)
	// nspawn's own locks would be written beside the root, in the store.
	// The root is read-only and every container has its own tmpfs over it,
	// so there is nothing for them to protect.
	env = append(env, "SYSTEMD_NSPAWN_LOCK=0")
	return &Invocation{Path: h.Nspawn, Args: a, Env: env}, machine, nil
}

func startContainer(ctx context.Context, m *manifest.Manifest, rt *Runtime) error {
	if rt.euid() != 0 {
		return &NotRootError{Backend: "container"}
	}
	h, err := detectContainerHost()
	if err != nil {
		return err
	}
	stateDir := rt.StateDir
	if stateDir == "" {
		if stateDir, err = ProjectStateDir(rt.Project); err != nil {
			return err
		}
	}
	// This process becomes nspawn (exec keeps the pid), so the record names
	// it before it exists; a record whose process is gone is dropped later.
	// The launcher registers it (Claim) when it decides to start rather
	// than join; the machine name is added here.
	rec := rt.Record
	if rec == nil {
		pid := os.Getpid()
		start, err := ProcessStart(pid)
		if err != nil {
			return err
		}
		rec = &Record{ID: NewRecordID(), Project: rt.Project, Backend: "container", PID: pid, PIDStart: start, Started: time.Now().UTC()}
	}
	inv, machine, err := containerInvocation(m, rt, h, rec.ID)
	if err != nil {
		return err
	}
	rec.Machine = machine
	if err := Register(stateDir, rec); err != nil {
		return fmt.Errorf("recording the container: %w", err)
	}
	err = execContainer(inv)
	if rt.Record == nil {
		Unregister(stateDir, rec.ID)
	}
	return &StartError{Err: err}
}

// execContainer replaces this process with nspawn, inside a mount namespace
// of its own whose /run/systemd/nspawn is a private tmpfs. It returns only
// on failure.
func execContainer(inv *Invocation) error {
	// unshare(2) and execve(2) act on the calling thread: keep them on one.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("a mount namespace for systemd-nspawn: %w", err)
	}
	// Slave, not shared: nothing mounted here reaches the host, while host
	// unmounts still reach here (a USB stick can be ejected).
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("a mount namespace for systemd-nspawn: %w", err)
	}
	const dir = "/run/systemd/nspawn"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755"); err != nil {
		return fmt.Errorf("mounting a tmpfs at %s: %w", dir, err)
	}
	return Exec(inv)
}

// containerProcesses finds, from the record of a running container, its
// init (nspawn's child, PID 1 inside) and the payload (the init's child).
// payload is 0 when the payload has already ended.
func containerProcesses(rec *Record) (init, payload int, err error) {
	if !rec.Alive() {
		return 0, 0, fmt.Errorf("the container of %s is not running", rec.Project)
	}
	for _, c := range processChildren(rec.PID) {
		if otherPIDNamespace(c) {
			init = c
			break
		}
	}
	if init == 0 {
		return 0, 0, errNoContainerProcess
	}
	if kids := processChildren(init); len(kids) > 0 {
		payload = kids[0]
	}
	return init, payload, nil
}

// processChildren lists a process's processChildren, oldest first: from
// /proc/PID/task/*/processChildren where the kernel has it, else by scanning /proc.
func processChildren(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/processChildren", pid))
	if len(tasks) > 0 {
		for _, t := range tasks {
			data, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(data)) {
				if n, err := strconv.Atoi(f); err == nil {
					out = append(out, n)
				}
			}
		}
	} else {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			n, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if ppid, err := processParent(n); err == nil && ppid == pid {
				out = append(out, n)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, _ := processStart(out[i])
		b, _ := processStart(out[j])
		return a < b
	})
	return out
}

func processParent(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if i < 0 || len(f) < 2 {
		return 0, fmt.Errorf("malformed stat")
	}
	return strconv.Atoi(f[1])
}

func otherPIDNamespace(pid int) bool {
	theirs, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	ours, err2 := os.Readlink("/proc/self/ns/pid")
	return err1 == nil && err2 == nil && theirs != ours
}

// stopContainer asks the payload to end (SIGTERM through the init), then
// kills the init — and with it everything in the container — after a grace
// period.
func stopContainer(ctx context.Context, rec *Record) error {
	if os.Geteuid() != 0 {
		return &NotRootError{Backend: "container"}
	}
	if !runningNotZombie(rec) {
		return nil
	}
	init, _, err := containerProcesses(rec)
	if err != nil {
		return err
	}
	_ = unix.Kill(init, unix.SIGTERM)
	grace, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if waitContainerGone(grace, rec) {
		return nil
	}
	_ = unix.Kill(init, unix.SIGKILL)
	final, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if waitContainerGone(final, rec) {
		return nil
	}
	return fmt.Errorf("the container of %s (nspawn pid %d) did not stop", rec.Project, rec.PID)
}

func waitContainerGone(ctx context.Context, rec *Record) bool {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if !runningNotZombie(rec) {
			return true
		}
		select {
		case <-ctx.Done():
			return !runningNotZombie(rec)
		case <-t.C:
		}
	}
}

// runningNotZombie is Record.Alive, except that an exited nspawn whose
// parent has not reaped it yet counts as gone.
func runningNotZombie(rec *Record) bool {
	if !rec.Alive() {
		return false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", rec.PID))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	return i >= 0 && len(f) > 0 && f[0] != "Z" && f[0] != "X"
}
