package nsenter

import (
	"errors"
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
