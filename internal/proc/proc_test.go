package proc

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// sleepers starts n children, each from a goroutine locked to its own OS
// thread that stays alive until the test ends: a multithreaded parent's
// children are spread over its threads' children files (a thread's children
// move to another thread only when it exits), which is how a Go launcher's
// children are.
func sleepers(t *testing.T, n int) []int {
	t.Helper()
	pids := make([]int, n)
	release := make(chan struct{})
	var started, ended sync.WaitGroup
	for i := range n {
		started.Add(1)
		ended.Add(1)
		go func() {
			defer ended.Done()
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			cmd := exec.Command("sleep", "30")
			err := cmd.Start()
			if err == nil {
				pids[i] = cmd.Process.Pid
			}
			started.Done()
			if err != nil {
				t.Error(err)
				return
			}
			<-release
			cmd.Process.Kill()
			cmd.Wait()
		}()
	}
	started.Wait()
	t.Cleanup(func() { close(release); ended.Wait() })
	return pids
}

func TestChildrenAreReadFromEveryThreadsChildrenFile(t *testing.T) {
	pids := sleepers(t, 4)
	fromTasks, ok := childrenFromTasks(os.Getpid())
	if !ok {
		t.Fatal("no /proc/PID/task/*/children read: every lookup would scan all of /proc")
	}
	for _, pid := range pids {
		if !slices.Contains(fromTasks, pid) {
			t.Errorf("child %d (started from another thread) missing from %v", pid, fromTasks)
		}
	}
	all := Children(os.Getpid())
	for _, pid := range pids {
		if !slices.Contains(all, pid) {
			t.Errorf("Children lacks %d: %v", pid, all)
		}
	}
	for i := 1; i < len(all); i++ {
		a, _ := ReadStat(all[i-1])
		b, _ := ReadStat(all[i])
		if a.StartTime > b.StartTime {
			t.Errorf("not oldest first: %v", all)
		}
	}
	scanned := childrenByScan(os.Getpid())
	for _, pid := range pids {
		if !slices.Contains(scanned, pid) {
			t.Errorf("the /proc scan lacks %d: %v", pid, scanned)
		}
	}
}

func TestStatParsesOddCommandNames(t *testing.T) {
	line := "4242 (a) (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200 18446744073709551615\n"
	st, err := parseStat([]byte(line))
	if err != nil || st.State != 'S' || st.PPID != 17 || st.StartTime != 987654 {
		t.Fatalf("parseStat = %+v, %v", st, err)
	}
	if _, err := parseStat([]byte("4242 (x) S 1")); err == nil {
		t.Error("a truncated stat was accepted")
	}
	me, err := ReadStat(os.Getpid())
	if err != nil || me.PPID != os.Getppid() {
		t.Errorf("own stat = %+v, %v", me, err)
	}
}

func TestAnExitedProcessIsNotRunningBeforeItIsReaped(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	pid := cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := ReadStat(pid)
		if err != nil {
			t.Fatal(err)
		}
		if st.Exited() {
			if _, err := StartTime(pid); !errors.Is(err, ErrExited) {
				t.Errorf("StartTime of a zombie: %v", err)
			}
			if Running(pid, st.StartTime) {
				t.Error("a zombie counts as running")
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the child never exited")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEnvironAndStatus(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	cmd.Env = []string{"A=1", "B=x=y", "C="}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// Until the child has exec'd, its environ is the parent's.
	deadline := time.Now().Add(5 * time.Second)
	for {
		env, err := Environ(cmd.Process.Pid)
		if err == nil && slices.Equal(env, cmd.Env) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Environ = %q, %v; want %q", env, err, cmd.Env)
		}
		time.Sleep(5 * time.Millisecond)
	}
	st, err := ReadStatus(os.Getpid())
	if err != nil || st.UID != os.Getuid() || st.GID != os.Getgid() || st.CapBnd == 0 {
		t.Errorf("own status = %+v, %v", st, err)
	}
	same, err := SharesNamespace(os.Getpid(), "pid")
	if err != nil || !same {
		t.Errorf("own pid namespace: %v, %v", same, err)
	}
}

func TestProcessHandleWaitsAndSignalsThatProcessOnly(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { cmd.Wait(); close(reaped) }()
	pid := cmd.Process.Pid
	start, err := StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(pid, start+1); !errors.Is(err, ErrExited) {
		t.Errorf("a handle on a recycled pid: %v", err)
	}
	p, err := Open(pid, start)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Wait(context.Background(), 50*time.Millisecond) {
		t.Fatal("Wait returned for a running process")
	}
	if err := p.Signal(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !p.Wait(context.Background(), 5*time.Second) {
		t.Fatal("Wait did not see the process exit")
	}
	<-reaped
	if _, err := Open(pid, start); !errors.Is(err, ErrExited) {
		t.Errorf("a handle on an exited process: %v", err)
	}
}

func TestExitCodes(t *testing.T) {
	for script, want := range map[string]int{"exit 0": 0, "exit 3": 3, "kill -9 $$": 137, "kill -TERM $$": 143} {
		err := exec.Command("sh", "-c", script).Run()
		got, ok := 0, err == nil
		if err != nil {
			got, ok = ExitCodeOf(err)
		}
		if !ok || got != want {
			t.Errorf("%s: exit code %d (%v), want %d", script, got, ok, want)
		}
	}
	if _, ok := ExitCodeOf(errors.New("not an exit")); ok {
		t.Error("an ordinary error read as an exit")
	}
	if sig := SignalOf(exec.Command("sh", "-c", "kill -9 $$").Run()); sig != 9 {
		t.Errorf("SignalOf = %d, want 9", sig)
	}
}

// TestPIDNamespaceMembers: a process in its own pid namespace (unshare, as
// root) has as members exactly the processes started inside it.
func TestPIDNamespaceMembers(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "unshare")
	// unshare forks the namespace's init (sh), which starts one sleeper.
	holder := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", "sleep 30 & wait")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	var init int
	for deadline := time.Now().Add(5 * time.Second); init == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if kids := Children(holder.Process.Pid); len(kids) == 1 {
			if same, err := SharesNamespace(kids[0], "pid"); err == nil && !same {
				init = kids[0]
			}
		}
	}
	if init == 0 {
		t.Fatal("no init in a new pid namespace")
	}
	var members []int
	for deadline := time.Now().Add(5 * time.Second); len(members) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		members = PIDNamespaceMembers(init)
	}
	if len(members) != 1 || !slices.Contains(Children(init), members[0]) {
		t.Errorf("members %v, want the sleeper (the init's child %v)", members, Children(init))
	}
	if slices.Contains(PIDNamespaceMembers(init), os.Getpid()) {
		t.Error("this process is listed in another pid namespace")
	}
	fd, err := unix.PidfdOpen(init, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if WaitPidfd(fd, 50*time.Millisecond) {
		t.Fatal("WaitPidfd returned for a running process")
	}
	unix.Kill(init, unix.SIGKILL)
	if !WaitPidfd(fd, -1) {
		t.Error("WaitPidfd without a timeout did not see the process exit")
	}
}
