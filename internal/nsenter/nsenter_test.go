package nsenter

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

func TestExecvpCandidates(t *testing.T) {
	if got := execvpCandidates("bash", "/a/bin::/b"); !slices.Equal(got, []string{"/a/bin/bash", "./bash", "/b/bash"}) {
		t.Errorf("got %v", got)
	}
	if got := execvpCandidates("./x", "/a"); !slices.Equal(got, []string{"./x"}) {
		t.Errorf("got %v", got)
	}
}

// A process that shares the caller's mount namespace is no sandbox.
func TestStartRefusesTheCallersOwnMountNamespace(t *testing.T) {
	_, err := Start(Options{Target: os.Getpid(), Argv: []string{"true"}})
	var e *Error
	if !errors.As(err, &e) || e.Step != "opening its mount namespace" {
		t.Fatalf("Start into this process's own namespaces: %v", err)
	}
}

// TestStartJoinsAMountNamespace enters a process that has a mount namespace
// of its own (with a tmpfs only it sees) and runs a command there: in the
// first working directory that exists, with exactly the given environment,
// found through the given PATH, its status this process's to wait for.
func TestStartJoinsAMountNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "unshare")
	seen := t.TempDir()
	mark := filepath.Join(seen, "mark")
	holder := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs none "$0" && touch "$0/only-inside" && touch "$1" && exec sleep 30`, seen, mark)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(seen, "only-inside")); err == nil {
			t.Fatal("the namespace's tmpfs is visible outside: no private mount namespace")
		}
		if data, err := exec.Command("nsenter", "-t", strconv.Itoa(holder.Process.Pid), "-m", "ls", seen).Output(); err == nil && strings.Contains(string(data), "only-inside") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the helper never mounted its tmpfs")
		}
	}
	p, err := Start(Options{
		Target: holder.Process.Pid,
		Argv:   []string{"sh", "-c", `test -e only-inside && test "$X" = 1 && test -z "$HOME" && exit 7`},
		Env:    []string{"X=1", "PATH=/usr/bin:/bin"},
		Path:   "/usr/bin:/bin",
		Dirs:   []string{filepath.Join(seen, "missing"), seen},
	})
	if err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(p.Pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	if ws.ExitStatus() != 7 || p.Dir != 1 {
		t.Errorf("exit status %d (want 7: the command saw the namespace's tmpfs and its environment), directory %d (want 1)", ws.ExitStatus(), p.Dir)
	}
	_, err = Start(Options{Target: holder.Process.Pid, Argv: []string{"no-such-command"}, Path: "/usr/bin:/bin", Dirs: []string{seen}})
	var e *Error
	if !errors.As(err, &e) || e.Step != StepExec || !errors.Is(err, unix.ENOENT) {
		t.Errorf("a missing command: %v", err)
	}
}

// TestStartListens joins a process with user, mount and network
// namespaces of its own, as unprivileged bwrap makes them, asking for a
// socket on that namespace's loopback: the command, started after it,
// reaches it there at once, and the socket is not on this namespace's
// loopback.
func TestStartListens(t *testing.T) {
	holder := userNetNamespaces(t)
	port := 30000 + time.Now().Nanosecond()%20000
	p, err := Start(Options{
		Target: holder.Process.Pid,
		// No wait: the socket exists before the command starts.
		Argv:       []string{"bash", "-c", fmt.Sprintf(`exec 3<>/dev/tcp/127.0.0.1/%d && echo hello-from-inside >&3`, port)},
		Env:        []string{"PATH=/usr/bin:/bin"},
		Path:       "/usr/bin:/bin",
		ListenPort: port,
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Listener == nil {
		t.Fatal("no listener returned")
	}
	ln, err := net.FileListener(p.Listener)
	p.Listener.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var ws unix.WaitStatus
	if _, err := unix.Wait4(p.Pid, &ws, 0, nil); err != nil || ws.ExitStatus() != 0 {
		t.Fatalf("the command inside could not connect: %v, status %d", err, ws.ExitStatus())
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if line, _ := bufio.NewReader(c).ReadString('\n'); strings.TrimSpace(line) != "hello-from-inside" {
		t.Fatalf("read %q", line)
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 200*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("the socket listens on this namespace's loopback, not the target's")
	}
	// The port taken inside (this listener still open): the join fails,
	// naming the step, and its command never runs.
	mark := filepath.Join(t.TempDir(), "ran")
	_, err = Start(Options{Target: holder.Process.Pid, Argv: []string{"touch", mark}, Env: []string{"PATH=/usr/bin:/bin"},
		Path: "/usr/bin:/bin", ListenPort: port})
	var e *Error
	if !errors.As(err, &e) || e.Step != "binding 127.0.0.1" || !errors.Is(err, unix.EADDRINUSE) {
		t.Errorf("a join onto a taken port: %v, want the bind's EADDRINUSE", err)
	}
	if _, err := os.Stat(mark); err == nil {
		t.Error("the command ran although its join failed")
	}
	// The loopback inside takes large packets (loopbackGSO), where the
	// kernel lets a device's limit change (5.19 and later).
	if ip, err := exec.LookPath("ip"); err == nil && kernelAtLeast(5, 19) {
		b, err := exec.Command("nsenter", "--target", strconv.Itoa(holder.Process.Pid), "--user", "--net", "--preserve-credentials", "--", ip, "-d", "link", "show", "lo").CombinedOutput()
		if err != nil {
			t.Fatalf("ip link inside: %v\n%s", err, b)
		}
		if want := fmt.Sprintf("gso_max_size %d ", loopbackGSO); !strings.Contains(string(b), want) {
			t.Errorf("the loopback inside: want %q in\n%s", want, b)
		}
	}
}

// userNetNamespaces starts a process with user, mount and network
// namespaces of its own (its loopback up), as unprivileged bwrap makes
// them, ended with the test.
func userNetNamespaces(tb testing.TB) *exec.Cmd {
	tb.Helper()
	testenv.RequireProgram(tb, "unshare")
	holder := exec.Command("unshare", "--user", "--map-root-user", "--mount", "--net", "sh", "-c", "ip link set lo up 2>/dev/null || true; echo up; exec sleep 600")
	out, _ := holder.StdoutPipe()
	if err := holder.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "up" {
		tb.Skip("unshare --user --mount --net did not start namespaces here (no user namespaces?)")
	}
	return holder
}
