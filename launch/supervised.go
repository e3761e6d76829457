package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/internal/sockpath"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// A sandbox and its supervisor. Every running sandbox has one host-side
// supervisor process (claude-sandbox-supervisor): it owns the sandbox's
// lifetime — the sandbox lives while any session does and ends with the
// last one — and serves the doors bound into it (the Nix daemon gateway,
// …). Every session, the first launch's included, joins the sandbox: the
// launcher is the parent of its own command and exits with its status.
//
// A sandbox's run directory holds its sockets:
//
//	<state>/run/<id>/control.sock   the supervisor's control socket
//	<state>/run/<id>/nix.sock       the Nix daemon gateway, bound into the sandbox
//	<state>/run/<id>/supervisor.log what the supervisor and the sandbox process said
const (
	StateRun         = "run"
	SessionLogName   = "session.log"
	nixGatewayName   = "nix.sock"
	supervisorLog    = "supervisor.log"
	SupervisorName   = "claude-sandbox-supervisor"
	supervisorEnvVar = "CLAUDE_SANDBOX_SUPERVISOR"
)

// RunDir is a sandbox's run directory.
func RunDir(stateDir, id string) string { return filepath.Join(stateDir, StateRun, id) }

// SessionLog is the project's session log, shared by its sandboxes.
func SessionLog(stateDir string) string { return filepath.Join(stateDir, SessionLogName) }

// NixGatewaySocket is where a sandbox's Nix daemon gateway listens on the host.
func NixGatewaySocket(runDir string) string { return filepath.Join(runDir, nixGatewayName) }

// SupervisorMissingError: the supervisor program is not installed beside
// this one.
type SupervisorMissingError struct{ Looked []string }

func (e *SupervisorMissingError) Error() string {
	return SupervisorName + " is not installed beside claude-sandbox (looked in " + fmt.Sprint(e.Looked) + ")"
}
func (e *SupervisorMissingError) Hint() string {
	return "install both programs (go build -o DIR ./cmd/...), or set " + supervisorEnvVar + " to its path"
}

// FindSupervisor returns the supervisor program: $CLAUDE_SANDBOX_SUPERVISOR,
// else the one beside this program, else the one on PATH.
func FindSupervisor(getenv func(string) (string, bool)) (string, error) {
	if p, ok := getenv(supervisorEnvVar); ok && filepath.IsAbs(p) {
		return p, nil
	}
	var looked []string
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		p := filepath.Join(filepath.Dir(exe), SupervisorName)
		looked = append(looked, filepath.Dir(exe))
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(SupervisorName); err == nil {
		return p, nil
	}
	return "", &SupervisorMissingError{Looked: append(looked, "$PATH")}
}

// Doors are the listening sockets a sandbox's supervisor serves, made by
// the launcher before the sandbox starts (a socket bound into the sandbox
// must exist first; connections made before the supervisor is up wait in
// the kernel's queue, never fail).
type Doors struct {
	RunDir  string
	Control *net.UnixListener
	Nix     *net.UnixListener // nil: no Nix inside
	SSH     *net.UnixListener // nil: no SSH agent inside
}

// OpenDoors creates the run directory and the sockets the plan binds.
func OpenDoors(p *Plan, rt *Runtime) (*Doors, error) {
	if err := os.MkdirAll(filepath.Dir(p.RunDir), 0o700); err != nil {
		return nil, fmt.Errorf("creating the run directory: %w", err)
	}
	if err := os.Mkdir(p.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the run directory: %w", err)
	}
	d := &Doors{RunDir: p.RunDir}
	var err error
	if d.Control, err = ListenUnix(filepath.Join(p.RunDir, control.SocketName), 0o600); err != nil {
		d.Close()
		return nil, err
	}
	if p.NixGateway != "" {
		// World-connectable: the sandbox's user is this user, but inside a
		// container the socket is reached by the uid the payload runs as.
		if d.Nix, err = ListenUnix(p.NixGateway, 0o666); err != nil {
			d.Close()
			return nil, err
		}
	}
	if p.SSHAgent != "" {
		if d.SSH, err = ListenUnix(p.SSHAgent, 0o666); err != nil {
			d.Close()
			return nil, err
		}
	}
	// Bound before the supervisor fills them: they must exist at the start.
	for _, dir := range []string{p.TrustDir, p.ChromiumPolicies} {
		if dir == "" {
			continue
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			d.Close()
			return nil, fmt.Errorf("creating %s: %w", dir, err)
		}
	}
	if p.ClaudeLogin != "" {
		f, err := os.OpenFile(p.ClaudeLogin, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("creating %s: %w", p.ClaudeLogin, err)
		}
		f.Close()
	}
	return d, nil
}

// ListenUnix makes a listening socket at path (however long the path),
// with mode, for a supervisor to serve: this process closing its copy
// leaves the socket in place.
func ListenUnix(path string, mode os.FileMode) (*net.UnixListener, error) {
	addr, dir, err := sockpath.Short(path)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", path, err)
	}
	// The listener's file must not be unlinked by this process closing
	// its copy: the supervisor serves it from now on.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Close closes this process's copies of the sockets (the supervisor has
// its own) — and, when no supervisor took them, removes the run directory.
func (d *Doors) Close() {
	if d.Control != nil {
		d.Control.Close()
	}
	if d.Nix != nil {
		d.Nix.Close()
	}
	if d.SSH != nil {
		d.SSH.Close()
	}
}

// Remove deletes the run directory: for doors no supervisor took.
func (d *Doors) Remove() { _ = os.RemoveAll(d.RunDir) }

// Started is a sandbox a backend started for its supervisor to own.
type Started struct {
	// The sandbox process (bwrap, nspawn) and its init, the process
	// sessions join: the supervisor takes its own handles on them.
	OuterPID  int
	InitPID   int
	InitStart uint64
	// Ready waits until sessions can join.
	Ready func(ctx context.Context) error
	// RunAs: who the supervisor becomes (a root launcher's sandbox for a
	// user); nil: this process's user.
	RunAs *control.RunAs
	// Release closes what this process keeps of the start.
	Release func()
}

// pendingSupervisor is a sandbox's supervisor started before the sandbox
// (so that its start-up overlaps the sandbox's): it has its descriptors
// and waits for its spec, which Adopt completes and hands over once the
// sandbox's processes are known. Until then this launch owns the
// sandbox; a supervisor never handed its spec ends without touching it.
type pendingSupervisor struct {
	pid   int
	first *control.Conn // this launch's session, registered at birth
	spec  control.Spec
	specW *os.File
}

// startSupervisor starts the sandbox's supervisor, detached from this
// process's terminal and session, with the doors, the lifetime pipe, the
// placeholders and the first session (this launch's) as descriptors.
func startSupervisor(p *Plan, rt *Runtime, rec *Record, doors *Doors, lifetime *os.File) (*pendingSupervisor, error) {
	bin, err := FindSupervisor(rt.lookupEnv)
	if err != nil {
		return nil, err
	}
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours := os.NewFile(uintptr(pair[0]), "session")
	theirs := os.NewFile(uintptr(pair[1]), "session")
	defer theirs.Close()
	fail := func(err error) (*pendingSupervisor, error) {
		ours.Close()
		return nil, err
	}

	files := []*os.File{}
	add := func(f *os.File) int {
		files = append(files, f)
		return 2 + len(files)
	}
	ctlFile, err := doors.Control.File()
	if err != nil {
		return fail(err)
	}
	defer ctlFile.Close()
	spec := control.Spec{
		ID: rec.ID, Project: p.Project, Backend: p.Backend, StateDir: p.StateDir, RunDir: p.RunDir,
		LogPath: SessionLog(p.StateDir), Record: recordPath(p.StateDir, rec.ID),
	}
	spec.ControlFD = add(ctlFile)
	spec.FirstSessionFD = add(theirs)
	spec.Adopted = &control.AdoptedSpec{LifetimeFD: add(lifetime)}
	for _, h := range p.held {
		spec.Placeholders = append(spec.Placeholders, control.PlaceholderSpec{Path: h.Path, FD: add(h.File), Recorded: h.Recorded})
	}
	if len(spec.Placeholders) > 0 {
		spec.PlaceholderRecords = placeholderRecords(p.StateDir)
	}
	if doors.Nix != nil {
		nixFile, err := doors.Nix.File()
		if err != nil {
			return fail(err)
		}
		defer nixFile.Close()
		spec.Nix = &control.NixSpec{
			ListenerFD:             add(nixFile),
			Socket:                 p.NixUpstream,
			ConfDir:                nixConfDir(rt),
			AllowUnsandboxedBuilds: rt.NixUnsandboxedBuilds,
			Network:                p.Network,
		}
	}
	if e := rt.Egress; e != nil {
		spec.Net = &control.NetSpec{Mode: e.Mode, Allow: e.Allow, Deny: e.Deny, Upstream: e.Upstream, NoProxy: e.NoProxy}
	}
	if doors.SSH != nil {
		sshFile, err := doors.SSH.File()
		if err != nil {
			return fail(err)
		}
		defer sshFile.Close()
		spec.SSHAgent = &control.SSHAgentSpec{ListenerFD: add(sshFile), Upstream: p.SSHUpstream}
	}
	SecretServices(&spec, p, rt)
	specR, specW, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	defer specR.Close()
	log, err := os.OpenFile(filepath.Join(p.RunDir, supervisorLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		specW.Close()
		return fail(err)
	}
	defer log.Close()
	cmd := &exec.Cmd{
		Path: bin, Args: []string{SupervisorName, "--id=" + rec.ID},
		Env:   []string{"PATH=/run/current-system/sw/bin:/usr/bin:/bin", "LC_ALL=C"},
		Stdin: specR, Stdout: log, Stderr: log, ExtraFiles: files,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if v, ok := rt.lookupEnv("PATH"); ok {
		// nix config show: the supervisor asks the host's Nix how it builds.
		cmd.Env[0] = "PATH=" + v
	}
	if err := cmd.Start(); err != nil {
		specW.Close()
		return fail(fmt.Errorf("starting %s: %w", SupervisorName, err))
	}
	// Reaped by whoever inherits it when this launch ends; never waited for here.
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		specW.Close()
		return nil, err
	}
	return &pendingSupervisor{pid: cmd.Process.Pid, first: control.NewConn(c), spec: spec, specW: specW}, nil
}

// Adopt hands the started sandbox to the supervisor: its spec, completed
// with the sandbox's processes and the user to become. It says whether
// the command must wait for the supervisor to be up (supervisorReady):
// it writes files the sandbox reads at once (the secrets broker's trust
// files).
func (sv *pendingSupervisor) Adopt(s *Started) (waitForIt bool, err error) {
	a := sv.spec.Adopted
	a.InitPID, a.InitStart = s.InitPID, s.InitStart
	a.OuterPID = s.OuterPID
	a.OuterStart, _ = proc.StartTime(s.OuterPID)
	sv.spec.RunAs = s.RunAs
	data, err := json.Marshal(sv.spec)
	if err != nil {
		sv.Abandon()
		return false, err
	}
	w := sv.specW
	sv.specW = nil
	// The supervisor may still be starting; the pipe holds the spec.
	go func() { _, _ = w.Write(data); w.Close() }()
	return sv.spec.Broker != nil, nil
}

// Abandon tells a supervisor that was never handed its sandbox to end.
func (sv *pendingSupervisor) Abandon() {
	if sv.specW != nil {
		sv.specW.Close()
		sv.specW = nil
	}
	sv.first.Close()
}

// SecretServices fills in what a supervisor's spec needs of the launch's
// secrets, for every backend that spawns one (the VM's own spawn
// included): the broker, with the sealed secrets, the trust files'
// places and Claude Code's login, for a spec with a network (spec.Net
// set first); the keys its filtering SSH agent (spec.SSHAgent set first)
// may use.
func SecretServices(spec *control.Spec, p *Plan, rt *Runtime) {
	if spec.Net != nil {
		if sealed := p.Secrets.Seal(); len(sealed) > 0 || p.ClaudeLogin != "" {
			roots, _ := rt.lookupEnv("SSL_CERT_FILE")
			spec.Broker = &control.BrokerSpec{Secrets: sealed, TrustDir: p.TrustDir, ChromiumDir: p.ChromiumPolicies,
				Roots: roots, Label: filepath.Base(p.Project)}
			if p.ClaudeLogin != "" {
				spec.Broker.Login = &control.LoginSpec{ConfigDir: p.ClaudeConfigDir, SandboxFile: p.ClaudeLogin, APIHosts: loginAPIHosts(rt)}
			}
		}
	}
	if spec.SSHAgent != nil {
		spec.SSHAgent.Keys = rt.SSHKeys
	}
}

// supervisorReady waits until the supervisor answers on the first
// session's connection: it answers once everything it made before serving
// (the trust files) is in place. A supervisor that could not start is this
// launch's error.
func supervisorReady(ctx context.Context, first *control.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	reply, err := first.Call(ctx, control.Request{Op: control.OpReady})
	if err != nil {
		return fmt.Errorf("%s did not start: %w (its log: claude-sandbox log --json)", SupervisorName, err)
	}
	if !reply.OK {
		return fmt.Errorf("%s: %s", SupervisorName, reply.Reason)
	}
	return nil
}

// recordPath is a registry record's file.
func recordPath(stateDir, id string) string { return filepath.Join(recordsDir(stateDir), id+".json") }

// JoinSupervised registers a session with a running sandbox's supervisor
// and says where to join. The returned session must be closed when the
// command has ended (it is the session's registration).
func JoinSupervised(ctx context.Context, rec *Record, what string) (*Session, error) {
	if rec.Control == "" {
		return nil, &NotRunningError{Project: rec.Project}
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c, reply, err := control.Join(ctx, rec.Control, control.Request{PID: os.Getpid(), What: what})
	if errors.Is(err, control.ErrEnded) {
		return nil, &NotRunningError{Project: rec.Project}
	}
	if err != nil {
		return nil, &EnterError{Step: "registering with its supervisor", Err: err}
	}
	if !proc.Running(reply.Target, reply.TargetStart) {
		c.Close()
		return nil, &NotRunningError{Project: rec.Project}
	}
	return &Session{Record: rec, Target: reply.Target, TargetStart: reply.TargetStart, Conn: c}, nil
}

// Session is a launch's place in a running sandbox: registered with its
// supervisor (the sandbox lives at least as long as Conn is open) and told
// which process to join.
type Session struct {
	Record      *Record
	Target      int
	TargetStart uint64
	Conn        *control.Conn
	// Env is the session's environment when the launch decided it (the
	// sandbox's first session); a later one takes the sandbox's own.
	Env []string
	// Listen, for a backend that ListensOnJoin, asks for a TCP socket on
	// the sandbox's loopback, made before the command starts.
	Listen *Listen
	// ready, when set (a sandbox's first session, entered while the
	// sandbox still sets up), says when the sandbox can be joined.
	ready func(context.Context) error
}

// Ready waits until the session's sandbox can be joined: a backend's
// Enter prepares everything else first, then waits here just before it
// joins.
func (s *Session) Ready(ctx context.Context) error {
	if s.ready == nil {
		return nil
	}
	return s.ready(ctx)
}

// Listen is a socket a session's join makes on the sandbox's loopback
// (127.0.0.1:Port), handed to Take as soon as it exists.
type Listen struct {
	Port int
	Take func(*os.File) error
}

// Close ends the session's registration, waiting (boundedly) until a
// sandbox it was the last session of has been torn down: a launch that
// returns leaves no sandbox, record or run directory behind it.
func (s *Session) Close() {
	if s.Conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	_, _ = s.Conn.Call(ctx, control.Request{Op: control.OpLeave})
	cancel()
	s.Conn.Close()
	s.Conn = nil
}

// Stop ends a running sandbox: through its supervisor, which asks every
// process in it to end and ends the rest after a grace period; a sandbox
// without one (started by an older claude-sandbox) by its backend.
func Stop(ctx context.Context, b Backend, rec *Record) error {
	if rec.Control == "" {
		return b.Stop(ctx, rec)
	}
	reply, err := control.Once(ctx, rec.Control, control.Request{Op: control.OpStop, PID: os.Getpid()})
	if err == nil && reply.OK {
		return nil
	}
	// The supervisor does not answer: its own signal handler ends the
	// sandbox; failing that, it goes, and the sandbox's keeper with it.
	sv, oerr := rec.Open()
	if errors.Is(oerr, proc.ErrExited) {
		return nil
	}
	if oerr != nil {
		return oerr
	}
	defer sv.Close()
	_ = sv.Signal(syscall.SIGTERM)
	if sv.Wait(ctx, 15*time.Second) {
		return nil
	}
	_ = sv.Signal(syscall.SIGKILL)
	if sv.Wait(ctx, 5*time.Second) {
		return nil
	}
	if err == nil {
		err = errors.New(reply.Reason)
	}
	return fmt.Errorf("the sandbox's supervisor (pid %d) did not end it: %v", rec.PID, err)
}

// Status asks a running sandbox's supervisor how it is (sessions, the
// decisions of its doors) and its backend for anything more (a VM's run
// state). Either may be empty.
func Status(ctx context.Context, b Backend, rec *Record) (string, *control.Status) {
	var st *control.Status
	if rec.Control != "" {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if reply, err := control.Once(ctx, rec.Control, control.Request{Op: control.OpStatus}); err == nil && reply.OK {
			st = reply.Status
		}
		cancel()
	}
	return b.Status(ctx, rec), st
}
