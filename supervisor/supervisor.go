// Package supervisor is the host-side process that stands between one
// running sandbox and the host: it owns the sandbox's lifetime (the sandbox
// lives while any session does, and ends with the last one, on `stop`, or
// with the supervisor itself), and runs the services whose sockets are
// bound into the sandbox (the Nix daemon gateway, the egress proxy, …).
// Every decision a service makes goes to the sandbox's session log.
//
// It does not decide what a sandbox contains or how it is started (the
// launcher and the backends do), and the launcher never links it: only
// the small control package is shared between the two processes.
package supervisor

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/claude-sandbox/claude-sandbox/sessionlog"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// Sandbox is the running sandbox a supervisor owns.
type Sandbox interface {
	// Ready waits until sessions can join and says where: the process
	// whose namespaces they enter, and its start time.
	Ready(ctx context.Context) (target int, start uint64, err error)
	// Done is closed when the sandbox has ended by itself.
	Done() <-chan struct{}
	// Stop ends the sandbox. graceful: its processes are first asked to
	// end (SIGHUP, SIGTERM) and given grace to do so.
	Stop(ctx context.Context, graceful bool, grace time.Duration) error
}

// Execer is a sandbox whose sessions run through the supervisor rather
// than by entering its namespaces (a VM): Exec serves one session on its
// launcher's connection (reply, then the session's frames) until it ends,
// and says whether the launcher goes on with control messages (its leave).
type Execer interface {
	Exec(ctx context.Context, c *control.Conn) (leaving bool)
	// Fault says why the sandbox never came up (nil: it did, or it is
	// still coming up).
	Fault() *control.Fault
}

// Killer is a sandbox that can be ended without waiting (Stop then waits
// for the end): the last session's leave kills it first, so that the
// kernel tears it down while the record is removed.
type Killer interface {
	Kill()
}

// Describer is a sandbox that says a few words about its own state for
// `ps` (a VM: its run state, accelerator, Nix store size).
type Describer interface {
	Status(ctx context.Context) string
}

// Service is one door the supervisor keeps for the sandbox.
type Service interface {
	Name() string
	// Serve runs until ctx ends; its listener was made before the sandbox started.
	Serve(ctx context.Context) error
}

// Supervisor runs one sandbox's lifetime.
type Supervisor struct {
	ID       string
	Sandbox  Sandbox
	Control  net.Listener
	First    *control.Conn // the session of the launcher that started the sandbox, registered at birth
	Services []Service
	// Log receives the supervisor's own entries; services log through
	// the same logger, wrapped in a Counter whose counts status reports.
	Log     sessionlog.Logger
	Counter *Counter
	// OnEnd runs once the sandbox is decided to end, before it is stopped:
	// the launcher's registry record goes, so no new launch finds it.
	OnEnd func()
	// AfterEnd runs once the sandbox and the services are gone, with
	// what Run will return, before a session that waits for the end
	// (OpLeave) is answered: the last words of the log, the run
	// directory's removal.
	AfterEnd func(error)
	// Doors take sockets a launcher made inside the sandbox, by service
	// name (OpDoor on the first session).
	Doors map[string]func(*os.File) error
	// Learned answers OpLearned: the rules learn mode recorded (nil: not
	// in learn mode).
	Learned func() []string
	// FirstSessionWait bounds how long a sandbox started without a first
	// session waits for one.
	FirstSessionWait time.Duration
	// StopGrace is how long `stop` lets the sandbox's processes end.
	StopGrace time.Duration

	mu       sync.Mutex
	sessions int
	joined   bool // a session was ever registered
	ending   bool
	started  time.Time
	endReq   chan bool // true: graceful
	ended    chan struct{}

	endOnce      sync.Once
	result       error // what Run returns, set before ended closes
	stopServices context.CancelFunc
	services     sync.WaitGroup
}

// Run serves until the sandbox has ended, and returns why it ended.
func (s *Supervisor) Run(ctx context.Context) error {
	if s.Log == nil {
		s.Log = sessionlog.Discard
	}
	if s.StopGrace == 0 {
		s.StopGrace = 5 * time.Second
	}
	if s.FirstSessionWait == 0 {
		s.FirstSessionWait = 30 * time.Second
	}
	s.started = time.Now()
	s.endReq = make(chan bool, 1)
	s.ended = make(chan struct{})

	svcCtx, stopServices := context.WithCancel(context.Background())
	s.stopServices = stopServices
	for _, svc := range s.Services {
		s.services.Add(1)
		go func(svc Service) {
			defer s.services.Done()
			if err := svc.Serve(svcCtx); err != nil && svcCtx.Err() == nil {
				// A door that fails stays shut: the sandbox loses it, never gains the host's.
				s.Log.Log(sessionlog.Entry{Service: svc.Name(), Decision: sessionlog.Note, Reason: "service stopped: " + err.Error()})
			}
		}(svc)
	}

	if s.First != nil {
		s.mu.Lock()
		s.sessions, s.joined = 1, true
		s.mu.Unlock()
		go s.holdFirstSession(s.First)
	}
	go s.accept()

	firstWait := time.NewTimer(s.FirstSessionWait)
	defer firstWait.Stop()
	var reason error
	graceful := false
	for reason == nil {
		select {
		case <-s.ended:
			// The last session's leave finished it.
			return s.result
		case <-ctx.Done():
			reason, graceful = ctx.Err(), true
		case <-s.Sandbox.Done():
			reason = errSandboxEnded
		case g := <-s.endReq:
			reason, graceful = errNoSessions, g
			if g {
				reason = errStopped
			}
		case <-firstWait.C:
			s.mu.Lock()
			if !s.joined {
				s.ending = true
				reason = errors.New("no session joined the sandbox")
			}
			s.mu.Unlock()
		}
	}
	s.finish(reason, graceful)
	return s.result
}

// finish ends the sandbox, once, for the first reason given (Run's, or
// the last session's leave, which finishes it itself rather than wait
// for Run to be scheduled): the record goes, the sandbox is stopped, the
// services end, AfterEnd runs, and ended closes.
func (s *Supervisor) finish(reason error, graceful bool) {
	s.endOnce.Do(func() {
		s.mu.Lock()
		s.ending = true
		s.mu.Unlock()
		if k, ok := s.Sandbox.(Killer); ok && !graceful {
			k.Kill()
		}
		if s.OnEnd != nil {
			s.OnEnd()
		}
		_ = s.Control.Close()
		stopCtx, cancel := context.WithTimeout(context.Background(), s.StopGrace+10*time.Second)
		err := s.Sandbox.Stop(stopCtx, graceful, s.StopGrace)
		cancel()
		s.stopServices()
		s.services.Wait()
		if err == nil && !errors.Is(reason, errNoSessions) && !errors.Is(reason, errStopped) && !errors.Is(reason, errSandboxEnded) {
			err = reason
		}
		if s.AfterEnd != nil {
			s.AfterEnd(err)
		}
		s.result = err
		close(s.ended)
	})
}

var (
	errNoSessions   = errors.New("the last session ended")
	errStopped      = errors.New("stopped")
	errSandboxEnded = errors.New("the sandbox ended")
)

// requestEnd asks Run to end the sandbox (once).
func (s *Supervisor) requestEnd(graceful bool) {
	select {
	case s.endReq <- graceful:
	default:
	}
}

func (s *Supervisor) accept() {
	for {
		c, err := s.Control.Accept()
		if err != nil {
			return
		}
		go s.handle(control.NewConn(c))
	}
}

// requestWait bounds how long a connection may take to say what it wants.
const requestWait = 10 * time.Second

func (s *Supervisor) handle(c *control.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), requestWait)
	var req control.Request
	err := c.Receive(ctx, &req)
	cancel()
	if err != nil {
		c.Close()
		return
	}
	switch req.Op {
	case control.OpJoin:
		s.mu.Lock()
		if s.ending {
			s.mu.Unlock()
			_ = c.Send(control.Reply{Ending: true, Reason: "the sandbox is ending"})
			c.Close()
			return
		}
		s.sessions++
		s.joined = true
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		target, start, err := s.Sandbox.Ready(ctx)
		cancel()
		if err != nil {
			_ = c.Send(control.Reply{Ending: true, Reason: err.Error()})
			c.Close()
			s.sessionEnded()
			return
		}
		if err := c.Send(control.Reply{OK: true, Target: target, TargetStart: start}); err != nil {
			c.Close()
			s.sessionEnded()
			return
		}
		s.holdSession(c, req.What)
	case control.OpExec:
		ex, ok := s.Sandbox.(Execer)
		if !ok {
			_ = c.Send(control.Reply{Reason: "this sandbox's sessions join it; they do not run through its supervisor"})
			c.Close()
			return
		}
		s.mu.Lock()
		if s.ending {
			s.mu.Unlock()
			r := control.Reply{Ending: true, Reason: "the sandbox is ending"}
			if f := ex.Fault(); f != nil {
				// It ends because it never came up: the launcher says why.
				r.Fault, r.Reason = f, f.Reason
			}
			_ = c.Send(r)
			c.Close()
			return
		}
		s.sessions++
		s.joined = true
		s.mu.Unlock()
		if ex.Exec(context.Background(), c) {
			s.holdSession(c, req.What)
			return
		}
		s.sessionEnded()
		c.Close()
	case control.OpStop:
		s.mu.Lock()
		s.ending = true
		s.mu.Unlock()
		s.requestEnd(true)
		select {
		case <-s.ended:
			_ = c.Send(control.Reply{OK: true})
		case <-time.After(s.StopGrace + 15*time.Second):
			_ = c.Send(control.Reply{Reason: "the sandbox did not end in time"})
		}
		c.Close()
	case control.OpStatus:
		_ = c.Send(control.Reply{OK: true, Status: s.status()})
		c.Close()
	case control.OpLearned:
		var rules []string
		if s.Learned != nil {
			rules = s.Learned()
		}
		_ = c.Send(control.Reply{OK: s.Learned != nil, Learned: rules, Reason: map[bool]string{true: "", false: "not in learn mode"}[s.Learned != nil]})
		c.Close()
	default:
		_ = c.Send(control.Reply{Reason: "unknown request " + req.Op})
		c.Close()
	}
}

// holdFirstSession keeps the starting launcher's session registered until
// its connection closes, and takes the doors it made inside the sandbox
// (OpDoor, each with a listening socket attached).
func (s *Supervisor) holdFirstSession(c *control.Conn) {
	defer c.Close()
	for {
		var req control.Request
		f, err := c.ReceiveWithFile(&req)
		if err != nil {
			s.sessionEnded()
			return
		}
		if req.Op == control.OpLeave {
			if f != nil {
				f.Close()
			}
			s.leave(c)
			return
		}
		reply := control.Reply{OK: true}
		door := s.Doors[req.Service]
		switch {
		case req.Op == control.OpReady:
		case req.Op != control.OpDoor:
			reply = control.Reply{Reason: "a session sends nothing but doors, ready and leave"}
		case f == nil:
			reply = control.Reply{Reason: "a door without its socket"}
		case door == nil:
			reply = control.Reply{Reason: "no service " + req.Service}
		default:
			if err := door(f); err != nil {
				reply = control.Reply{Reason: err.Error()}
			}
		}
		if f != nil {
			f.Close()
		}
		if err := c.Send(reply); err != nil {
			// The launcher is gone (killed before it read the answer):
			// so is its session.
			s.sessionEnded()
			return
		}
	}
}

// holdSession keeps a session registered until its connection closes.
func (s *Supervisor) holdSession(c *control.Conn, what string) {
	defer c.Close()
	for {
		// A session says nothing more than that it leaves; any read
		// result but a message is its end too.
		var req control.Request
		if err := c.Receive(context.Background(), &req); err != nil {
			s.sessionEnded()
			return
		}
		if req.Op == control.OpLeave {
			s.leave(c)
			return
		}
	}
}

// leave ends a session that said so, and answers once what it leaves
// behind is settled: at once if other sessions remain, after the sandbox
// has ended if it was the last.
func (s *Supervisor) leave(c *control.Conn) {
	if s.countOut() {
		// Bounded by the sandbox's own stop (finish's deadline).
		s.finish(errNoSessions, false)
	}
	_ = c.Send(control.Reply{OK: true})
}

// sessionEnded counts a session out and says whether it was the last;
// after the last, Run ends the sandbox.
func (s *Supervisor) sessionEnded() bool {
	last := s.countOut()
	if last {
		s.requestEnd(false)
	}
	return last
}

// countOut counts a session out and says whether it was the last.
func (s *Supervisor) countOut() bool {
	s.mu.Lock()
	s.sessions--
	last := s.sessions <= 0
	if last {
		// Decided under the lock that a join checks: a join from now on
		// is told to start a new sandbox instead.
		s.ending = true
	}
	s.mu.Unlock()
	return last
}

func (s *Supervisor) status() *control.Status {
	s.mu.Lock()
	st := &control.Status{ID: s.ID, Sessions: s.sessions, Started: s.started.UTC()}
	s.mu.Unlock()
	if s.Counter != nil {
		st.Services = s.Counter.Counts()
	}
	if d, ok := s.Sandbox.(Describer); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st.Detail = d.Status(ctx)
		cancel()
	}
	return st
}

// Counter counts the decisions logged through it, per service, and passes
// every entry on.
type Counter struct {
	Next sessionlog.Logger

	mu     sync.Mutex
	counts map[string]control.Counts
}

func (c *Counter) Log(e sessionlog.Entry) {
	c.mu.Lock()
	if c.counts == nil {
		c.counts = map[string]control.Counts{}
	}
	n := c.counts[e.Service]
	switch e.Decision {
	case sessionlog.Allow:
		n.Allowed++
	case sessionlog.Refuse:
		n.Refused++
	}
	c.counts[e.Service] = n
	c.mu.Unlock()
	if c.Next != nil {
		c.Next.Log(e)
	}
}

// Counts returns a copy of the counts so far.
func (c *Counter) Counts() map[string]control.Counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]control.Counts, len(c.counts))
	for k, v := range c.counts {
		out[k] = v
	}
	return out
}
