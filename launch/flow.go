package launch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/claude-sandbox/claude-sandbox/internal/nsenter"
	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/manifest"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// Launch is one launch of a sandbox for a project (`claude-sandbox
// PROJECT`, `exec`), in the order the steps run:
//
//	Check     before the closure is built: what this backend cannot do here
//	Plan      the whole start decided, nothing written (--dry-run ends here)
//	Run       plan → claim (join the running sandbox, or register this one)
//	          → prepare the host → start → unregister
//
// One sandbox per project: a launch whose configuration matches a running
// sandbox's joins it (Backend.Enter) unless New is set.
type Launch struct {
	Backend Backend
	Runtime *Runtime
	New     bool // --new: never join
	DryRun  bool // --dry-run: Check leaves out what only a start needs

	// The closure, once built: its manifest and store path.
	Manifest *manifest.Manifest
	Closure  string

	// CacheDir is the user's cache directory (rules once found good are
	// remembered there).
	CacheDir string
	// Say tells the person at the terminal what happens (joining, tmux).
	Say func(format string, args ...any)
	// Warn tells the person a one-line warning (a secret whose source
	// failed), whether or not a terminal is there.
	Warn func(string)
	Log  zerolog.Logger

	// Learned, after Run of a sandbox in learn mode, are the allow rules
	// covering what it reached (nil when it learned nothing or could not
	// say).
	Learned []string
}

// Check refuses what this launch cannot do, before anything is built: a
// switch the backend cannot honour, and (unless a dry run) what the host
// or user lacks.
func (l *Launch) Check() error {
	rt := l.Runtime
	if rt.Tmux && !l.Backend.Traits().Tmux {
		return &UnsupportedError{Backend: l.Backend.Name(), Flag: "--tmux",
			Advice: "drop --tmux (or set tmux = false in the configuration); `claude-sandbox enter` opens another shell in the running sandbox"}
	}
	if l.DryRun {
		return nil
	}
	if err := l.Backend.Check(rt); err != nil {
		return err
	}
	return CheckRules(rt.Egress, rt.Secrets, l.CacheDir, rt.Getenv)
}

// Plan decides the start. It writes nothing anywhere; the plan's
// Invocation is what --dry-run prints (Close it when it will not run).
func (l *Launch) Plan() (*Plan, error) {
	rt := l.Runtime
	if l.Manifest.Backend != l.Backend.Name() {
		return nil, fmt.Errorf("the closure %s is a %s sandbox, not a %s one", l.Closure, l.Manifest.Backend, l.Backend.Name())
	}
	if rt.StateDir == "" {
		dir, err := ProjectStatePath(rt.Project)
		if err != nil {
			return nil, err
		}
		rt.StateDir = dir
	}
	p := NewPlan(l.Backend, l.Manifest, rt, NewRecordID())
	planNixGateway(p, rt)
	if _, ok := l.Backend.(Spawner); ok {
		planSSHAgent(p, rt)
	}
	l.planSecrets(p)
	if err := l.Backend.Plan(p, l.Manifest, rt); err != nil {
		p.Invocation.Close()
		return nil, err
	}
	return p, nil
}

// Run plans the sandbox, then joins the project's running sandbox with the
// same configuration (unless New) or registers this one, prepares the host
// and starts it. A sandbox that lives under a supervisor (every backend
// that is a Spawner) is started detached, its supervisor beside it, and
// this launch then joins it like any later session: it returns with its
// own command's status, and the sandbox lives on while other sessions do.
func (l *Launch) Run(ctx context.Context) error {
	p, err := l.Plan()
	if err != nil {
		return err
	}
	defer p.Invocation.Close() // reached only when it does not run
	rt := l.Runtime
	rec := &Record{
		ID:      p.ID,
		Project: rt.Project,
		Backend: l.Backend.Name(),
		Closure: l.Closure,
		Config:  ConfigOf(l.Backend.Name(), l.Closure, rt),
	}
	spawner, supervised := l.Backend.(Spawner)
	forceNew := l.New
	var others []*Record
	var doors *Doors
	for {
		if supervised {
			// Before the claim, so that the record names a control socket
			// from its first instant: a launch that joins this sandbox
			// while it starts waits in that socket's queue.
			if err := EnsureProjectStateDir(p.StateDir, rt.Project); err != nil {
				return err
			}
			if doors, err = OpenDoors(p, rt); err != nil {
				return err
			}
			rec.Control = filepath.Join(p.RunDir, control.SocketName)
		}
		var join *Record
		join, others, err = Claim(ctx, p.StateDir, rec, forceNew)
		if err != nil || join != nil {
			if doors != nil {
				doors.Close()
				doors.Remove()
				doors = nil
			}
		}
		if err != nil {
			return err
		}
		if join == nil {
			break
		}
		l.say("joining the sandbox already running for %s (pid %d); --new starts a separate one", rt.Project, join.PID)
		err = joinSandbox(ctx, l.Backend, join, rt, p.Command, sessionName(rt))
		// A sandbox that ended between the look and the join (it ran a
		// short command): start one after all.
		if !EndedBeforeJoin(err) {
			return err
		}
		forceNew = true
	}
	if !supervised {
		defer func() {
			// Reached when the backend supervises, or could not start. A
			// sandbox whose Start handed it to a supervisor of its own (a
			// VM: the record names its control socket) outlives this
			// launch: that supervisor removes the record.
			if rec.Control == "" {
				Unregister(p.StateDir, rec.ID)
			}
		}()
	}
	l.Log.Debug().Str("id", rec.ID).Str("config", rec.Config).Msg("registered")
	if len(others) > 0 && !forceNew {
		l.say("a sandbox with other settings runs for %s; starting a separate one (`claude-sandbox enter` joins the running one)", rt.Project)
	}
	if rt.Tmux {
		l.say("tmux: attach from the host with  tmux -S %s attach", TmuxSocket(p.StateDir))
	}
	if rt.NixUnsandboxedBuilds && p.NixGateway != "" {
		l.say("--nix-unsandboxed-builds: where the host's Nix daemon does not sandbox its builds, builds asked for inside run on the host as its build users, with the host's file system and network")
	}
	if !supervised {
		if err := PrepareHost(p); err != nil {
			return err
		}
		defer p.ReleasePlaceholders()
		if e := rt.Egress; e != nil && e.Mode == NetLearn {
			p.BeforeLeave = l.reportLearned
		}
		return l.Backend.Start(ctx, p, rec)
	}
	return l.startSupervised(ctx, spawner, p, rec, doors)
}

// startSupervised starts a registered sandbox detached, hands it to a new
// supervisor, and joins it as this launch's session.
func (l *Launch) startSupervised(ctx context.Context, spawner Spawner, p *Plan, rec *Record, doors *Doors) (err error) {
	handedOver := false
	defer func() {
		doors.Close()
		if !handedOver {
			Unregister(p.StateDir, rec.ID)
			doors.Remove()
			p.ReleasePlaceholders()
		} else {
			p.handOverPlaceholders() // the supervisor holds them now
		}
	}()
	if err := PrepareHost(p); err != nil {
		return err
	}
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		return err
	}
	// The supervisor starts first, so that its start-up (a second Go
	// program's) overlaps the sandbox's rather than following it: a short
	// session's end waits for the supervisor to be up. It holds the
	// lifetime pipe from its start: if it dies, the keeper reads end of
	// file and the sandbox ends.
	sv, err := startSupervisor(p, l.Runtime, rec, doors, lifeW)
	lifeW.Close()
	if err != nil {
		lifeR.Close()
		return err
	}
	started, err := spawner.Spawn(ctx, p, lifeR)
	lifeR.Close()
	if err != nil {
		sv.Abandon()
		return err
	}
	defer func() {
		if started.Release != nil {
			started.Release()
		}
	}()
	waitForIt, err := sv.Adopt(started)
	if err != nil {
		return err
	}
	handedOver = true
	first := sv.first
	s := &Session{Record: rec, Target: started.InitPID, TargetStart: started.InitStart, Conn: first, Env: p.Env}
	// Closed last: a launch returns once the sandbox it was the last
	// session of is gone, whatever failed before.
	defer s.Close()
	if u := started.RunAs; u != nil {
		// The supervisor, once it is this user, removes its sockets there.
		_ = os.Lchown(p.RunDir, u.UID, u.GID)
	}
	// The record names the supervisor from now on: it lives as long as
	// the sandbox, and removes the record when the sandbox ends.
	rec.PID = sv.pid
	if rec.PIDStart, err = proc.StartTime(sv.pid); err == nil {
		err = Register(p.StateDir, rec)
	}
	if err != nil {
		return fmt.Errorf("registering the sandbox: %w", err)
	}
	var handOver func(*os.File) error
	if l.Runtime.Egress != nil {
		// The proxy's socket, on the sandbox's own loopback (there once
		// the sandbox is up), goes to the supervisor without waiting for
		// it: connections wait in the socket's queue until it serves them.
		handOver = func(proxy *os.File) error {
			if err := first.Post(control.Request{Op: control.OpDoor, Service: "net"}, proxy); err != nil {
				return fmt.Errorf("handing the proxy's port to %s: %w", SupervisorName, err)
			}
			return nil
		}
		if l.Backend.Traits().ListensOnJoin {
			s.Listen = &Listen{Port: ProxyPort, Take: handOver}
			handOver = nil
		}
	}
	// Enter prepares what it can while the sandbox still sets up, and
	// waits for it just before joining.
	s.ready = func(ctx context.Context) error {
		if err := started.Ready(ctx); err != nil {
			return err
		}
		if handOver != nil {
			proxy, err := nsenter.ListenLoopback(started.InitPID, ProxyPort)
			if err != nil {
				return fmt.Errorf("the sandbox's proxy port: %w", err)
			}
			err = handOver(proxy)
			proxy.Close()
			if err != nil {
				return err
			}
		}
		if waitForIt {
			return supervisorReady(ctx, first)
		}
		return nil
	}
	err = l.Backend.Enter(ctx, s, l.Runtime, p.Command)
	if e := l.Runtime.Egress; e != nil && e.Mode == NetLearn {
		l.reportLearned(ctx, rec)
	}
	return err
}

// joinSandbox runs argv in a running sandbox as a session of its own:
// registered with the sandbox's supervisor for as long as it runs.
func joinSandbox(ctx context.Context, b Backend, rec *Record, rt *Runtime, argv []string, what string) error {
	if rec.Control == "" || b.Traits().SessionsThroughSupervisor {
		return b.Enter(ctx, &Session{Record: rec}, rt, argv)
	}
	s, err := JoinSupervised(ctx, rec, what)
	if err != nil {
		return err
	}
	defer s.Close()
	return b.Enter(ctx, s, rt, argv)
}

// sessionName names a session in the session log.
func sessionName(rt *Runtime) string {
	switch {
	case len(rt.Command) > 0:
		return "exec: " + strings.Join(rt.Command, " ")
	case rt.Shell:
		return "shell"
	}
	return "claude"
}

// reportLearned asks the sandbox's supervisor what learn mode recorded
// (sessions still running may add more: this is what was reached so far).
func (l *Launch) reportLearned(ctx context.Context, rec *Record) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reply, err := control.Once(ctx, rec.Control, control.Request{Op: control.OpLearned})
	if err != nil || !reply.OK {
		l.Log.Warn().Err(err).Str("reason", reply.Reason).Msg("learn mode: the supervisor did not say what was reached")
		return
	}
	l.Learned = reply.Learned
}

func (l *Launch) warn(msg string) {
	if l.Warn != nil {
		l.Warn(msg)
		return
	}
	l.Log.Warn().Msg(msg)
}

func (l *Launch) say(format string, args ...any) {
	if l.Say != nil {
		l.Say(format, args...)
	}
}

// Enter runs a command, or a login shell, in a running sandbox (`enter`).
func Enter(ctx context.Context, b Backend, rec *Record, rt *Runtime) error {
	return joinSandbox(ctx, b, rec, rt, EnterCommand(rec, rt), "enter")
}
