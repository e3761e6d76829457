package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
)

// Adopted is a sandbox whose process a launcher started itself (while
// this supervisor started: so that no launch waits for a second Go
// program's start-up), handed over as pidfds of the sandbox process and
// of its init (pid 1 of the sandbox's pid namespace, the process sessions
// join), and the write end of the keeper's lifetime pipe.
// The keeper inside reads that pipe until end of file: closing it (or this
// process dying) lets the sandbox end.
type Adopted struct {
	Outer    int      // pidfd of the sandbox process (bwrap)
	Init     int      // pidfd of the sandbox's init
	InitPID  int      // its pid, which sessions join
	Lifetime *os.File // write end of the keeper's lifetime pipe

	done chan struct{}
}

// Adopt takes handles on a sandbox's processes, by pid and start time,
// and watches it. A sandbox that has already ended (its init gone) is
// adopted as ended: the supervisor tidies up after it like after any.
func Adopt(outerPID int, outerStart uint64, initPID int, initStart uint64, lifetime *os.File) (*Adopted, error) {
	a := &Adopted{Outer: -1, Init: -1, InitPID: initPID, Lifetime: lifetime}
	outer, err := proc.Open(outerPID, outerStart)
	if err == nil {
		a.Outer = outer.Fd()
	} else if !errors.Is(err, proc.ErrExited) {
		return nil, fmt.Errorf("the sandbox process: %w", err)
	}
	init, err := proc.Open(initPID, initStart)
	if err == nil {
		a.Init = init.Fd()
	} else if !errors.Is(err, proc.ErrExited) {
		return nil, fmt.Errorf("the sandbox's init: %w", err)
	}
	a.Watch()
	return a, nil
}

// Watch starts watching the sandbox process; call it once before use.
func (a *Adopted) Watch() {
	a.done = make(chan struct{})
	if a.Init < 0 {
		close(a.done)
		return
	}
	go func() {
		defer close(a.done)
		// The init outlives bwrap's own process only while something
		// in the sandbox does; it is the sandbox's real end.
		proc.WaitPidfd(a.Init, -1)
	}()
}

// Ready: an adopted sandbox was ready before it was handed over.
func (a *Adopted) Ready(context.Context) (int, uint64, error) {
	select {
	case <-a.done:
		return 0, 0, errors.New("the sandbox has ended")
	default:
	}
	st, err := proc.ReadStat(a.InitPID)
	if err != nil {
		return 0, 0, fmt.Errorf("the sandbox's init: %w", err)
	}
	return a.InitPID, st.StartTime, nil
}

func (a *Adopted) Done() <-chan struct{} { return a.done }

// Kill ends the sandbox without waiting: its keeper's pipe closes and its
// init is killed, which takes every process in it along.
func (a *Adopted) Kill() {
	if a.Lifetime != nil {
		a.Lifetime.Close()
		a.Lifetime = nil
	}
	if a.Init >= 0 {
		_ = unix.PidfdSendSignal(a.Init, unix.SIGKILL, nil, 0)
	}
}

// Stop ends the sandbox. Graceful: every process in it but its init and
// keeper is sent SIGHUP and SIGTERM (what a closing terminal and a polite
// request send) and given grace; then the keeper's pipe closes and the
// init is killed, which ends every process left in its pid namespace.
func (a *Adopted) Stop(ctx context.Context, graceful bool, grace time.Duration) error {
	if graceful && a.Lifetime != nil {
		// A keeper that understands it (the container's init, which may
		// signal what this process may not) asks everyone itself.
		_, _ = a.Lifetime.Write([]byte("stop\n"))
	}
	if graceful {
		members := proc.PIDNamespaceMembers(a.InitPID)
		for _, pid := range members {
			_ = unix.Kill(pid, unix.SIGHUP)
			_ = unix.Kill(pid, unix.SIGTERM)
		}
		deadline := time.Now().Add(grace)
		for len(members) > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			members = proc.PIDNamespaceMembers(a.InitPID)
		}
	}
	if a.Lifetime != nil {
		a.Lifetime.Close()
		a.Lifetime = nil
	}
	if a.Init < 0 {
		return nil // ended before it was adopted
	}
	_ = unix.PidfdSendSignal(a.Init, unix.SIGKILL, nil, 0)
	wait := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		wait = max(time.Until(d), 0)
	}
	if !proc.WaitPidfd(a.Init, wait) {
		return errors.New("the sandbox's init did not end")
	}
	// Done too, from here: what runs after a stop (the placeholders'
	// release) asks Done whether the sandbox has ended, and the watcher
	// may not have been scheduled yet.
	if a.done != nil {
		<-a.done
	}
	// bwrap's own process ends with its init; it is the launcher's child,
	// reaped by whoever inherited it.
	if a.Outer >= 0 {
		proc.WaitPidfd(a.Outer, 2*time.Second)
	}
	return nil
}
