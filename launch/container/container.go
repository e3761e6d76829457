// Package container is the systemd-nspawn backend: root only, an
// ephemeral root, the payload run as the invoking user. It renders the
// launch core's typed plan into nspawn's flags, becomes nspawn, provides
// the container's init (this same binary, run inside), and joins, stops
// and describes running containers. What crosses into the container is the
// core's decision; no flag of another backend is ever parsed here.
//
// The root is `--volatile=yes`: a tmpfs nspawn creates in the container's
// own mount namespace, with the closure's root tree mounted read-only at
// /usr. Nothing of it is on disk, so nothing is left to clean when the
// container ends, however it ends: the init (init.go) dies with nspawn, and
// the namespace and its tmpfs go with the last process. Before nspawn runs,
// the launcher also gives it a private tmpfs at /run/systemd/nspawn, where
// nspawn keeps per-machine directories it cannot always remove itself (it
// refuses to delete them on a disk-backed /run, and a SIGKILLed nspawn
// removes nothing).
package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/internal/tty"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// Name is the backend's name.
const Name = "container"

// Backend is the systemd-nspawn backend.
type Backend struct{}

func (Backend) Name() string { return Name }

func (Backend) Traits() launch.Traits {
	return launch.Traits{NeedsRoot: true, SecretBroker: true, Protects: true}
}

// Check: systemd-nspawn creates namespaces and mounts only root may.
func (Backend) Check(rt *launch.Runtime) error {
	if rt.EffectiveUID() != 0 {
		return &launch.NotRootError{Backend: Name}
	}
	return nil
}

// host is what a launch needs from the host, found once per launch
// (detectHost) and injectable in tests.
type host struct {
	Nspawn   string            // the host's systemd-nspawn
	Self     string            // this binary, bound into the container as its init
	Systemd  bool              // systemd is PID 1: register the machine with machined
	Terminal bool              // stdin and stdout are terminals: nspawn gives the container a pty
	Exists   func(string) bool // host paths (optional mounts)
}

func detectHost() (host, error) {
	nspawn, err := launch.FindNspawn()
	if err != nil {
		return host{}, err
	}
	self, err := selfExecutable()
	if err != nil {
		return host{}, err
	}
	return host{
		Nspawn:   nspawn,
		Self:     self,
		Systemd:  systemdRuns(),
		Terminal: tty.IsTerminal(0) && tty.IsTerminal(1),
		Exists:   func(p string) bool { _, err := os.Stat(p); return err == nil },
	}, nil
}

var notHostName = lazyregexp.New(`[^a-z0-9]+`)

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

// detail is the container's part of a plan.
type detail struct {
	Machine string
	User    containerUser
}

// Plan decides the container's mounts, environment and init, and renders
// them as nspawn's command line: no secret in it (the payload's variables
// are named with --setenv=NAME and their values taken from nspawn's own
// environment).
func (Backend) Plan(p *launch.Plan, m *manifest.Manifest, rt *launch.Runtime) error {
	if err := refuseRootSteering(rt); err != nil {
		return err
	}
	h, err := detectHost()
	if err != nil {
		return err
	}
	u, err := invokingUser(rt)
	if err != nil {
		return err
	}
	return plan(p, m, rt, h, u)
}

func refuseRootSteering(rt *launch.Runtime) error {
	for _, name := range rt.ExtraEnv {
		if launch.SteersRoot(name) {
			return &EnvError{Name: name}
		}
	}
	return nil
}

func plan(p *launch.Plan, m *manifest.Manifest, rt *launch.Runtime, h host, u containerUser) error {
	if err := refuseRootSteering(rt); err != nil {
		return err
	}
	if m.Container == nil {
		return errors.New("container backend without a container section in the manifest")
	}
	inner := *rt
	inner.User, inner.Home = u.Name, u.Home
	env, err := launch.SandboxEnv(m, &inner)
	if err != nil {
		return err
	}
	owner := &launch.Owner{UID: u.UID, GID: u.GID}
	view := launch.Host{LookupEnv: rt.Getenv, Stat: os.Stat, UID: u.UID}
	fwd := view.Forwards(&inner)

	mounts := []launch.Mount{{Kind: launch.ROBind, Source: manifest.StoreDir, Dest: manifest.StoreDir}}
	mounts = append(mounts, launch.HostEtcMounts(m)...)
	nix, nixEnv := launch.NixMounts(p)
	mounts = append(mounts, nix...)
	// The user's runtime directory, theirs to write in; the sockets go in it.
	mounts = append(mounts, launch.Mount{Kind: launch.Dir, Dest: launch.RuntimeDirInside(u.UID), Mode: 0o700})
	mounts = append(mounts, fwd.Mounts...)
	agent, agentEnv := launch.SSHAgentMounts(p, u.UID)
	mounts = append(mounts, agent...)
	login := launch.ClaudeLoginMounts(p, rt, u.Home)
	trust, secretEnv := launch.SecretMounts(p)
	mounts = append(mounts, trust...)
	user, prepare, protected := launch.UserMounts(m, launch.UserFiles{Home: u.Home, MayCreate: true, Owner: owner}, &inner)
	mounts = append(mounts, user...)
	mounts = append(mounts, login...)
	mounts = launch.ChromiumTrustMounts(p, m, mounts)
	mounts = launch.ApproveKeyPlaceholder(p, u.Home, mounts)
	// The project's state: persistent /tmp, ~/.local, the browser profile
	// and the tmux socket, made by root under root's state directory, then
	// given to the user.
	if p.StateDir != "" {
		state, dirs := launch.StateMounts(p.StateDir, u.Home, owner)
		mounts = append(mounts, launch.TmpMount(p.StateDir))
		mounts = append(mounts, state...)
		prepare = append(prepare, dirs...)
	}
	mounts = append(mounts, launch.Mount{Kind: launch.Bind, Source: rt.Project, Dest: rt.Project})
	// The project's protected paths, over its bind (nspawn mounts in the
	// order of their paths).
	covers, dirs, inProject, err := launch.ProjectProtection(rt.Project, rt, owner)
	if err != nil {
		return err
	}
	mounts = append(mounts, covers...)
	prepare = append(prepare, dirs...)
	protected = append(protected, inProject...)
	// An empty home of the user's own; nspawn mounts it before the project,
	// should the project lie inside it. A home inside the project is the
	// project's.
	if u.Home != rt.Project && !strings.HasPrefix(u.Home, rt.Project+"/") {
		mounts = append(mounts, launch.Mount{Kind: launch.Dir, Dest: u.Home, Mode: 0o700})
	}
	mounts = append(mounts, launch.Mount{Kind: launch.ROBind, Source: h.Self, Dest: InitPath})
	p.Mounts, p.Prepare, p.Protected = mounts, prepare, protected
	p.Env = launch.MergeEnv(env, fwd.Env, nixEnv, agentEnv, secretEnv, launch.ProxyEnv(rt.Egress), map[string]string{
		"PATH": strings.Join(append(append([]string{}, m.Path...), filepath.Join(u.Home, ".local/bin")), ":"),
	})
	machine := MachineName(rt.Project, p.ID)
	p.Detail = &detail{Machine: machine, User: u}
	inv, err := render(p, m, h, u, machine)
	if err != nil {
		return err
	}
	p.Invocation = inv
	return nil
}

// copyStaging is where a File mount's source is bound for the init to copy
// into place: nspawn has no file copies of its own.
const copyStaging = "/run/claude-sandbox/copy/"

// render writes the plan as nspawn's command line and environment.
func render(p *launch.Plan, m *manifest.Manifest, h host, u containerUser, machine string) (*launch.Invocation, error) {
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
	// Its own network namespace, whatever the network mode: loopback only,
	// the proxy on it its one way out.
	a = append(a, "--private-network")
	spec := initSpec{
		UID: u.UID, GID: u.GID, Groups: u.Groups, User: u.Name, Home: u.Home,
		Cwd: p.Cwd, Toplevel: m.Container.Toplevel, Keep: true,
	}
	devices := false
	bind := func(flag string, mt launch.Mount) bool {
		// nspawn has no -try: an optional source missing now is left out,
		// one Start will create is not.
		if mt.Optional && !p.WillExist(mt.Source, h.Exists) {
			return false
		}
		a = append(a, flag+nspawnPath(mt.Source)+":"+nspawnPath(mt.Dest))
		return true
	}
	for _, mt := range p.Mounts {
		switch mt.Kind {
		case launch.Bind:
			bind("--bind=", mt)
		case launch.ROBind:
			bind("--bind-ro=", mt)
		case launch.DevBind:
			if bind("--bind=", mt) {
				devices = true
			}
		case launch.Tmpfs:
			// root's: with a mode that allows no writing (a placeholder),
			// the payload can neither write in it nor change the mode.
			if mode := mt.Mode.Perm(); mode != 0 {
				a = append(a, fmt.Sprintf("--tmpfs=%s:mode=%04o", nspawnPath(mt.Dest), mode))
			} else {
				a = append(a, "--tmpfs="+nspawnPath(mt.Dest))
			}
		case launch.Symlink:
			// nspawn makes none: the init does, once everything is mounted.
			spec.Links = append(spec.Links, symlink{Target: mt.Source, Dest: mt.Dest})
		case launch.Dir:
			// A tmpfs of the user's own: in the volatile root a directory
			// would be root's.
			mode := mt.Mode.Perm()
			if mode == 0 {
				mode = 0o755
			}
			a = append(a, fmt.Sprintf("--tmpfs=%s:mode=%04o,uid=%d,gid=%d", nspawnPath(mt.Dest), mode, u.UID, u.GID))
		case launch.File:
			if mt.Source == "" {
				if mt.Secret || p.RunDir == "" {
					return nil, fmt.Errorf("no nspawn equivalent for a file given by content (%s)", mt.Dest)
				}
				// Written into the run directory at Start, copied into place by the init.
				mt.Source = filepath.Join(p.RunDir, "files", strconv.Itoa(len(p.Files)))
				p.Files = append(p.Files, launch.HostFile{Path: mt.Source, Data: mt.Data, Mode: 0o644})
			}
			staging := copyStaging + strconv.Itoa(len(spec.Copies))
			if bind("--bind-ro=", launch.Mount{Source: mt.Source, Dest: staging, Optional: mt.Optional}) {
				spec.Copies = append(spec.Copies, fileCopy{Dest: mt.Dest, Mode: mt.Mode.Perm()})
			}
		default:
			return nil, fmt.Errorf("no nspawn equivalent for a %s mount at %s", mt.Kind, mt.Dest)
		}
	}
	if devices && h.Systemd {
		// nspawn's scope allows only the basic device nodes; the GPU's
		// render nodes are character devices of the drm class.
		a = append(a, "--property=DeviceAllow=char-drm rw")
	}
	// The init is the container's keeper: its standard input is the
	// lifetime pipe, its output says when the container is ready. Sessions
	// get terminals of their own when they join.
	a = append(a, "--console=pipe")
	for _, kv := range p.Env {
		name, _, _ := strings.Cut(kv, "=")
		a = append(a, "--setenv="+name)
	}
	a = append(a, "--")
	a = append(a, spec.args()...)
	// nspawn's own locks would be written beside the root, in the store.
	// The root is read-only and every container has its own tmpfs over it,
	// so there is nothing for them to protect.
	env := append(append([]string(nil), p.Env...), "SYSTEMD_NSPAWN_LOCK=0")
	return &launch.Invocation{Path: h.Nspawn, Args: a, Env: env, Session: p.Command}, nil
}

// Start is not used: a container is spawned for its supervisor.
func (Backend) Start(context.Context, *launch.Plan, *launch.Record) error {
	return errors.New("containers start through Spawn")
}

// NspawnWrapperName is the name this binary runs under to start nspawn
// in a mount namespace of its own (NspawnWrapper).
const NspawnWrapperName = "claude-sandbox-nspawn"

// NspawnWrapper is this binary's role of starting systemd-nspawn: inside a
// mount namespace of its own whose /run/systemd/nspawn is a private tmpfs
// (nspawn keeps per-machine directories there that it cannot always
// remove), it executes the command line it was given. A Go program can do
// this only in a process of its own: unshare(2) and execve(2) act on the
// calling thread.
func NspawnWrapper(args []string) int {
	if len(args) < 1 || !filepath.IsAbs(args[0]) {
		fmt.Fprintln(os.Stderr, "claude-sandbox (nspawn): usage: NSPAWN ARGS...")
		return 125
	}
	runtime.LockOSThread()
	if err := privateNspawnDir(); err != nil {
		fmt.Fprintf(os.Stderr, "claude-sandbox (nspawn): %v\n", err)
		return 125
	}
	err := unix.Exec(args[0], args[1:], os.Environ())
	fmt.Fprintf(os.Stderr, "claude-sandbox (nspawn): starting %s: %v\n", args[0], err)
	return 126
}

func privateNspawnDir() error {
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
	return nil
}

// containerProcesses finds, from the record of a running container, its
// init (nspawn's child, PID 1 inside) and the payload (the init's child).
// payload is 0 when the payload has already ended.
func containerProcesses(rec *launch.Record) (init, payload int, err error) {
	if !rec.Alive() {
		return 0, 0, fmt.Errorf("the container of %s is not running", rec.Project)
	}
	for _, c := range proc.Children(rec.PID) {
		if same, err := proc.SharesNamespace(c, "pid"); err == nil && !same {
			init = c
			break
		}
	}
	if init == 0 {
		return 0, 0, errNoContainerProcess
	}
	if kids := proc.Children(init); len(kids) > 0 {
		payload = kids[0]
	}
	return init, payload, nil
}

// Stop asks the payload to end (SIGTERM through the init), then kills the
// init — and with it everything in the container — after a grace period.
func (Backend) Stop(ctx context.Context, rec *launch.Record) error {
	if os.Geteuid() != 0 {
		return &launch.NotRootError{Backend: Name}
	}
	nspawn, err := rec.Open()
	if errors.Is(err, proc.ErrExited) {
		return nil
	}
	if err != nil {
		return err
	}
	defer nspawn.Close()
	init, _, err := containerProcesses(rec)
	if err != nil {
		return err
	}
	_ = unix.Kill(init, unix.SIGTERM)
	if nspawn.Wait(ctx, 10*time.Second) {
		return nil
	}
	_ = unix.Kill(init, unix.SIGKILL)
	if nspawn.Wait(context.Background(), 5*time.Second) {
		return nil
	}
	return fmt.Errorf("the container of %s (nspawn pid %d) did not stop", rec.Project, rec.PID)
}

// Status: the record says all there is.
func (Backend) Status(context.Context, *launch.Record) string { return "" }
