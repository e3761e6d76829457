package bubblewrap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/launch"
)

// Spawn starts bwrap detached (a session of its own, no controlling
// terminal), its keeper reading lifetime, and returns as soon as bwrap has
// made the sandbox's init. Ready then tells when the sandbox's set-up is
// complete, without polling: bwrap's child reads one byte from --block-fd
// once its mounts and namespaces are final, just before it forks the init
// and the keeper; the pipe holding that byte is one page long, so its
// write end turns writable the moment the byte is read.
func (Backend) Spawn(ctx context.Context, p *launch.Plan, lifetime *os.File) (*launch.Started, error) {
	inv := p.Invocation
	if keeper := inv.Args[len(inv.Args)-1]; !executable(keeper) {
		return nil, &launch.StartError{Err: fmt.Errorf("the closure has no %s to keep the sandbox open", keeper)}
	}
	log, err := os.OpenFile(filepath.Join(p.RunDir, "bwrap.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	blockR, blockW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer blockR.Close()
	infoR, infoW, err := os.Pipe()
	if err != nil {
		blockW.Close()
		return nil, err
	}
	defer infoR.Close()
	fail := func(err error) (*launch.Started, error) {
		blockW.Close()
		infoW.Close()
		return nil, err
	}
	if _, err := unix.FcntlInt(blockW.Fd(), unix.F_SETPIPE_SZ, os.Getpagesize()); err != nil {
		return fail(fmt.Errorf("sizing bwrap's block pipe: %w", err))
	}
	if _, err := blockW.Write([]byte{0}); err != nil {
		return fail(err)
	}

	// The child's descriptors: the keeper's lifetime pipe as its standard
	// input, a log as its output, the plan's files at the numbers its
	// arguments name, then the info and block pipes.
	top := 2
	for _, f := range inv.Files {
		top = max(top, f.FD)
	}
	infoFD, blockFD := top+1, top+2
	files := make([]uintptr, blockFD+1)
	for i := range files {
		files[i] = ^uintptr(0)
	}
	files[0], files[1], files[2] = lifetime.Fd(), log.Fd(), log.Fd()
	for _, f := range inv.Files {
		d := f.Descriptor()
		if d == nil {
			return fail(fmt.Errorf("descriptor %d (%s) was already released", f.FD, f.What))
		}
		files[f.FD] = d.Fd()
	}
	files[infoFD], files[blockFD] = infoW.Fd(), blockR.Fd()
	args := append([]string{inv.Args[0], "--info-fd", strconv.Itoa(infoFD), "--block-fd", strconv.Itoa(blockFD)}, inv.Args[1:]...)
	pid, err := syscall.ForkExec(inv.Path, args, &syscall.ProcAttr{
		Env: inv.Env, Files: files, Sys: &syscall.SysProcAttr{Setsid: true},
	})
	infoW.Close()
	if err != nil {
		return fail(&launch.StartError{Err: fmt.Errorf("starting %s: %w", inv.Path, err)})
	}
	outer, err := pidfd(pid)
	if err != nil {
		blockW.Close()
		return nil, err
	}
	initPID, err := readChildPID(infoR, 30*time.Second)
	if err != nil {
		// bwrap ended before it made the sandbox: what it said is in its log.
		outer.Close()
		blockW.Close()
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil)
		return nil, startFailure(p.RunDir, err)
	}
	initStart, err := proc.StartTime(initPID)
	if err != nil {
		outer.Close()
		blockW.Close()
		return nil, startFailure(p.RunDir, err)
	}
	s := &launch.Started{OuterPID: pid, InitPID: initPID, InitStart: initStart}
	s.Ready = func(ctx context.Context) error {
		if err := waitSetUp(ctx, blockW, outer); err != nil {
			return startFailure(p.RunDir, err)
		}
		return nil
	}
	s.Release = func() {
		blockW.Close()
		outer.Close()
	}
	return s, nil
}

func pidfd(pid int) (*os.File, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return os.NewFile(uintptr(fd), "pidfd"), nil
}

// readChildPID reads bwrap's --info-fd report for the pid of the process
// that becomes the sandbox's init.
func readChildPID(r *os.File, limit time.Duration) (int, error) {
	_ = r.SetReadDeadline(time.Now().Add(limit))
	data, err := io.ReadAll(io.LimitReader(r, 64<<10))
	if err != nil {
		return 0, err
	}
	var info struct {
		ChildPID int `json:"child-pid"`
	}
	if err := json.Unmarshal(data, &info); err != nil || info.ChildPID <= 0 {
		return 0, errors.New("bwrap ended before it started the sandbox")
	}
	return info.ChildPID, nil
}

// waitSetUp waits for bwrap's child to take the byte from the block pipe
// (its set-up is done), or for bwrap to end first.
func waitSetUp(ctx context.Context, blockW, outer *os.File) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Second)
	}
	for {
		fds := []unix.PollFd{
			{Fd: int32(blockW.Fd()), Events: unix.POLLOUT},
			{Fd: int32(outer.Fd()), Events: unix.POLLIN},
		}
		ms := int(time.Until(deadline) / time.Millisecond)
		if ms <= 0 {
			return errors.New("bwrap did not finish setting up the sandbox in time")
		}
		_, err := unix.Poll(fds, min(ms, 100))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
		if fds[0].Revents != 0 {
			return nil
		}
		if fds[1].Revents != 0 {
			return errors.New("bwrap ended while setting up the sandbox")
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// startFailure says why bwrap could not start the sandbox, in bwrap's words.
func startFailure(runDir string, err error) error {
	data, _ := os.ReadFile(filepath.Join(runDir, "bwrap.log"))
	if msg := strings.TrimSpace(string(data)); msg != "" {
		lines := strings.Split(msg, "\n")
		err = fmt.Errorf("%w: %s", err, lines[len(lines)-1])
	}
	return &launch.StartError{Err: err}
}

func executable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}
