package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Adopted is a sandbox whose process a launcher started before this
// supervisor existed (bubblewrap: so that no launch waits for a second Go
// program's start-up), handed over as descriptors: pidfds of the sandbox
// process and of its init (pid 1 of the sandbox's pid namespace, the
// process sessions join), and the write end of the keeper's lifetime pipe.
// The keeper inside reads that pipe until end of file: closing it (or this
// process dying) lets the sandbox end.
type Adopted struct {
	Outer    int      // pidfd of the sandbox process (bwrap)
	Init     int      // pidfd of the sandbox's init
	InitPID  int      // its pid, which sessions join
	Lifetime *os.File // write end of the keeper's lifetime pipe

	done chan struct{}
}

// Watch starts watching the sandbox process; call it once before use.
func (a *Adopted) Watch() {
	a.done = make(chan struct{})
	go func() {
		defer close(a.done)
		// The init outlives bwrap's own process only while something
		// in the sandbox does; it is the sandbox's real end.
		waitPidfd(a.Init, -1)
	}()
}

// Ready: an adopted sandbox was ready before it was handed over.
func (a *Adopted) Ready(context.Context) (int, uint64, error) {
	select {
	case <-a.done:
		return 0, 0, errors.New("the sandbox has ended")
	default:
	}
	start, err := processStart(a.InitPID)
	if err != nil {
		return 0, 0, fmt.Errorf("the sandbox's init: %w", err)
	}
	return a.InitPID, start, nil
}

func (a *Adopted) Done() <-chan struct{} { return a.done }

// Stop ends the sandbox. Graceful: every process in it but its init and
// keeper is sent SIGHUP and SIGTERM (what a closing terminal and a polite
// request send) and given grace; then the keeper's pipe closes and the
// init is killed, which ends every process left in its pid namespace.
func (a *Adopted) Stop(ctx context.Context, graceful bool, grace time.Duration) error {
	if graceful {
		members := pidNamespaceMembers(a.InitPID)
		for _, pid := range members {
			_ = unix.Kill(pid, unix.SIGHUP)
			_ = unix.Kill(pid, unix.SIGTERM)
		}
		deadline := time.Now().Add(grace)
		for len(members) > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			members = pidNamespaceMembers(a.InitPID)
		}
	}
	if a.Lifetime != nil {
		a.Lifetime.Close()
		a.Lifetime = nil
	}
	_ = unix.PidfdSendSignal(a.Init, unix.SIGKILL, nil, 0)
	ms := 5000
	if d, ok := ctx.Deadline(); ok {
		ms = max(int(time.Until(d)/time.Millisecond), 0)
	}
	if !waitPidfd(a.Init, ms) {
		return errors.New("the sandbox's init did not end")
	}
	// bwrap's own process ends with its init; it is the launcher's child,
	// reaped by whoever inherited it.
	waitPidfd(a.Outer, 2000)
	return nil
}

// waitPidfd waits for the process behind a pidfd to exit (ms < 0: forever).
func waitPidfd(fd, ms int) bool {
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}

// pidNamespaceMembers lists the processes in init's pid namespace other
// than init itself: the keeper, the sessions and whatever they started.
func pidNamespaceMembers(init int) []int {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", init))
	if err != nil {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == init {
			continue
		}
		if theirs, err := os.Readlink("/proc/" + e.Name() + "/ns/pid"); err != nil || theirs != ns {
			continue
		}
		out = append(out, pid)
	}
	return out
}

func statFields(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return nil, errors.New("malformed stat")
	}
	return f, nil
}

func processStart(pid int) (uint64, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[19], 10, 64)
}
