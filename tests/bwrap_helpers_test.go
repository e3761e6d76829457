package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/launch"
)

// Helpers for the bubblewrap probes: sandboxes left running in the
// background, pseudo-terminals, and the project state directory.

// baseEnv is the environment run() gives claude-sandbox.
func baseEnv(o runOpts) []string {
	if o.dirs == (cacheDirs{}) {
		o.dirs = sharedDirs()
	}
	path := o.path
	if path == "" {
		path = os.Getenv("PATH")
	}
	env := []string{
		"PATH=" + path, "HOME=" + os.Getenv("HOME"), "USER=" + os.Getenv("USER"),
		"XDG_CACHE_HOME=" + o.dirs.cache, "XDG_STATE_HOME=" + o.dirs.state,
		"CLAUDE_SANDBOX_NIXPKGS=" + fixture, "TERM=dumb",
	}
	return append(env, o.env...)
}

// background is a sandbox left running while a test probes it.
type background struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
	status int
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startBackground starts claude-sandbox with args; the test's cleanup ends it.
func startBackground(t testing.TB, o runOpts, args ...string) *background {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = baseEnv(o)
	bg := &background{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = bg.out, bg.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := cmd.Wait()
		bg.status = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			bg.status = ee.ExitCode()
		}
		close(bg.done)
	}()
	t.Cleanup(func() { bg.kill() })
	return bg
}

func (bg *background) exited() bool {
	select {
	case <-bg.done:
		return true
	default:
		return false
	}
}

// wait waits for the background sandbox to end on its own.
func (bg *background) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-bg.done:
		return bg.status
	case <-time.After(d):
		t.Fatalf("the sandbox did not end within %s; output:\n%s", d, bg.out)
		return -1
	}
}

func (bg *background) kill() {
	if !bg.exited() {
		_ = bg.cmd.Process.Signal(syscall.SIGKILL)
		<-bg.done
	}
}

// waitFor polls until a file exists (a probe's "I am running" mark).
func waitFor(t *testing.T, bg *background, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if bg != nil && bg.exited() {
			t.Fatalf("the sandbox ended before %s appeared (status %d):\n%s", path, bg.status, bg.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not appear", path)
}

// stateDir is the project's state directory under the given dirs.
func stateDir(d cacheDirs, project string) string {
	return filepath.Join(d.state, "claude-sandbox", "projects", launch.ProjectStateName(project))
}

type psEntry struct {
	ID      string `json:"id"`
	Project string `json:"project"`
	Backend string `json:"backend"`
	PID     int    `json:"pid"`
	Closure string `json:"closure"`
	// Sessions: how many sessions its supervisor counts.
	Sessions int `json:"sessions"`
}

// isSupervisor says whether pid is a claude-sandbox-supervisor process.
func isSupervisor(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && filepath.Base(exe) == "claude-sandbox-supervisor"
}

func ps(t *testing.T, o runOpts) []psEntry {
	t.Helper()
	r := run(t, o, "ps", "--json")
	var out []psEntry
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil {
		t.Fatalf("ps --json: %s", r)
	}
	return out
}

// waitNotListed waits until ps no longer lists a project's sandbox.
func waitNotListed(t *testing.T, project string, limit time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(limit); ; time.Sleep(100 * time.Millisecond) {
		var listed []psEntry
		for _, e := range ps(t, runOpts{}) {
			if e.Project == project {
				listed = append(listed, e)
			}
		}
		if len(listed) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ps still lists the sandbox %s after %v: %+v", project, limit, listed)
		}
	}
}

// pty is a pseudo-terminal: the test holds the master, a sandbox gets the
// slave as its controlling terminal.
type pty struct {
	master, slave *os.File
	out           *syncBuffer
	done          chan struct{}
}

func openPTY(t *testing.T) *pty {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &pty{master: m, slave: s, out: &syncBuffer{}, done: make(chan struct{})}
	go func() {
		io.Copy(p.out, m) // ends with EIO once every slave descriptor is closed
		close(p.done)
	}()
	t.Cleanup(func() { s.Close(); m.Close() })
	return p
}

// runOnPTY runs argv with the pty as its controlling terminal and returns
// its exit status; the terminal's output accumulates in p.out.
func (p *pty) run(t *testing.T, env []string, argv ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = p.slave, p.slave, p.slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err := cmd.Run()
	p.drain(t)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// ptyDrained follows a command's output on the terminal: once it is read
// from the master side, so is everything the command wrote before it.
const ptyDrained = "\x00drained\x00"

// drain waits until the reader has taken all the command's output from the
// terminal (it lags behind on a loaded machine), by writing a marker after
// it and waiting for the marker.
func (p *pty) drain(t *testing.T) {
	t.Helper()
	if _, err := p.slave.WriteString(ptyDrained); err != nil {
		t.Fatalf("writing to the terminal: %v", err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(p.out.String(), ptyDrained); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the terminal's output was not read within 30 s: %q", p.out.String())
		}
	}
}

// lines returns the terminal output without carriage returns.
func (p *pty) text() string {
	return strings.NewReplacer("\r", "", ptyDrained, "").Replace(p.out.String())
}

// waitNoRecords waits until a project's registry holds no record: every
// sandbox of it has ended and its supervisor removed its entry.
func waitNoRecords(t *testing.T, records string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		entries, _ := os.ReadDir(records)
		var names []string
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".json") {
				names = append(names, e.Name())
			}
		}
		if len(names) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry entries left after the sandbox ended: %v", names)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
