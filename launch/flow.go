package launch

import (
	"context"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/claude-sandbox/claude-sandbox/manifest"
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

	// Say tells the person at the terminal what happens (joining, tmux).
	Say func(format string, args ...any)
	Log zerolog.Logger
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
	return l.Backend.Check(rt)
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
	if err := l.Backend.Plan(p, l.Manifest, rt); err != nil {
		p.Invocation.Close()
		return nil, err
	}
	return p, nil
}

// Run plans the sandbox, then joins the project's running sandbox with the
// same configuration (unless New) or registers this one, prepares the host
// and starts it. A backend that becomes its sandbox does not return on
// success.
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
	forceNew := l.New
	var others []*Record
	for {
		var join *Record
		join, others, err = Claim(ctx, p.StateDir, rec, forceNew)
		if err != nil {
			return err
		}
		if join == nil {
			break
		}
		l.say("joining the sandbox already running for %s (pid %d); --new starts a separate one", rt.Project, join.PID)
		err = l.Backend.Enter(ctx, join, rt, p.Command)
		// A sandbox that ended between the look and the join (it ran a
		// short command): start one after all.
		if !EndedBeforeJoin(err) {
			return err
		}
		forceNew = true
	}
	defer func() {
		// Reached when the backend supervises, or could not start. A
		// sandbox handed to a supervisor (the record names its control
		// socket) outlives this launch: its supervisor removes the record.
		if rec.Control == "" {
			Unregister(p.StateDir, rec.ID)
		}
	}()
	l.Log.Debug().Str("id", rec.ID).Str("config", rec.Config).Msg("registered")
	if len(others) > 0 && !forceNew {
		l.say("a sandbox with other settings runs for %s; starting a separate one (`claude-sandbox enter` joins the running one)", rt.Project)
	}
	if rt.Tmux {
		l.say("tmux: attach from the host with  tmux -S %s attach", TmuxSocket(p.StateDir))
	}
	if err := PrepareHost(p); err != nil {
		return err
	}
	return l.Backend.Start(ctx, p, rec)
}

func (l *Launch) say(format string, args ...any) {
	if l.Say != nil {
		l.Say(format, args...)
	}
}

// Enter runs a command, or a login shell, in a running sandbox (`enter`).
func Enter(ctx context.Context, b Backend, rec *Record, rt *Runtime) error {
	return b.Enter(ctx, rec, rt, EnterCommand(rec, rt))
}
