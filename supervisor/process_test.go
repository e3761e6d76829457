package supervisor

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// startBwrap starts a real bubblewrap sandbox the way a launcher does:
// detached, its keeper `cat` reading a lifetime pipe, its init's pid from
// --info-fd. Returns the Adopted handle.
func startBwrap(t *testing.T) *Adopted {
	t.Helper()
	bwrap := testenv.RequireProgram(t, "bwrap")
	cat := testenv.RequireProgram(t, "cat")
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	infoR, infoW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// Readiness as a launcher sees it: bwrap's child reads one byte from
	// --block-fd once its set-up is complete; a pipe of one page holding
	// that byte turns writable at that moment.
	blockR, blockW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(blockW.Fd(), unix.F_SETPIPE_SZ, 4096); err != nil {
		t.Fatal(err)
	}
	blockW.Write([]byte{0})
	cmd := exec.Command(bwrap, "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
		"--info-fd", "3", "--block-fd", "4", cat)
	cmd.Stdin = lifeR
	cmd.ExtraFiles = []*os.File{infoW, blockR}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lifeR.Close()
	infoW.Close()
	blockR.Close()
	fds := []unix.PollFd{{Fd: int32(blockW.Fd()), Events: unix.POLLOUT}}
	if n, err := unix.Poll(fds, 10000); n != 1 || err != nil {
		t.Fatalf("bwrap did not finish its set-up: %d %v", n, err)
	}
	blockW.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	var info struct {
		ChildPID int `json:"child-pid"`
	}
	if err := json.NewDecoder(infoR).Decode(&info); err != nil {
		t.Fatalf("reading bwrap's info: %v", err)
	}
	infoR.Close()
	go func() { _ = cmd.Wait() }() // the launcher's role: reap bwrap
	outerStart, err := proc.StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	initStart, err := proc.StartTime(info.ChildPID)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Adopt(cmd.Process.Pid, outerStart, info.ChildPID, initStart, lifeW)
	if err != nil {
		t.Fatal(err)
	}
	if a.Outer < 0 || a.Init < 0 {
		t.Fatalf("Adopt found a running sandbox ended: %+v", a)
	}
	return a
}

// A sandbox that ended before its supervisor took it (bwrap failed a
// moment after it started) is adopted as ended: nothing to wait for.
func TestAdoptEndedSandbox(t *testing.T) {
	sleeper, start := startSleeper(t)
	sleeper.Process.Kill()
	sleeper.Wait()
	a, err := Adopt(sleeper.Process.Pid, start, sleeper.Process.Pid, start, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	default:
		t.Fatal("an ended sandbox was adopted as running")
	}
	if err := a.Stop(context.Background(), true, time.Second); err != nil {
		t.Fatalf("Stop of an ended sandbox: %v", err)
	}
}

func TestAdoptedStopEndsEveryProcess(t *testing.T) {
	testenv.RequireRoot(t) // bwrap --unshare-all as root needs no user namespace set-up
	a := startBwrap(t)
	target, start, err := a.Ready(context.Background())
	if err != nil || target != a.InitPID || start == 0 {
		t.Fatalf("Ready: %d %d %v", target, start, err)
	}
	// A process of the sandbox that ignores SIGTERM: what a graceful stop
	// cannot end, the init's death must.
	stubborn := exec.Command("nsenter", "--target", strconv.Itoa(a.InitPID), "--all", "--", "sh", "-c", "trap '' TERM HUP; exec sleep 300")
	var stubbornOut strings.Builder
	stubborn.Stdout, stubborn.Stderr = &stubbornOut, &stubbornOut
	if err := stubborn.Start(); err != nil {
		t.Fatal(err)
	}
	defer stubborn.Process.Kill()
	waited := make(chan error, 1)
	go func() { waited <- stubborn.Wait() }()
	var members []int
	for deadline := time.Now().Add(5 * time.Second); len(members) < 2 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		members = proc.PIDNamespaceMembers(a.InitPID)
	}
	if len(members) < 2 {
		t.Fatalf("found members %v of the sandbox, want the keeper and the sleeper (nsenter said %q)", members, stubbornOut.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Stop(ctx, true, 300*time.Millisecond); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done was not closed after Stop")
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("a process of the stopped sandbox lives on")
	}
}

func TestAdoptedEndsWhenLifetimeCloses(t *testing.T) {
	testenv.RequireRoot(t)
	a := startBwrap(t)
	a.Lifetime.Close() // the supervisor died: the keeper reads end of file
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("closing the lifetime pipe did not end an idle sandbox")
	}
}

// Once Stop has returned, Done is closed: what runs after a stop (the
// placeholders' release) asks Done whether the sandbox has ended, and
// must not find it running because the watcher was not yet scheduled.
func TestAdoptedDoneOnceStopped(t *testing.T) {
	for i := 0; i < 20; i++ {
		sleeper, start := startSleeper(t)
		a, err := Adopt(sleeper.Process.Pid, start, sleeper.Process.Pid, start, nil)
		if err != nil {
			t.Fatal(err)
		}
		a.Kill()
		if err := a.Stop(context.Background(), false, time.Second); err != nil {
			t.Fatal(err)
		}
		select {
		case <-a.Done():
		default:
			t.Fatal("Stop returned with Done still open")
		}
		sleeper.Wait()
	}
}

// startSleeper starts a process that stands for a sandbox, and its start
// time.
func startSleeper(t *testing.T) (*exec.Cmd, uint64) {
	t.Helper()
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleeper.Process.Kill() })
	start, err := proc.StartTime(sleeper.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return sleeper, start
}
