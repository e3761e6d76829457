package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// firstSandbox starts a long-running sandbox for p whose $HOME (a tmpfs of
// that sandbox alone) holds a mark, and waits until it runs.
func firstSandbox(t *testing.T, o runOpts, p string, flags ...string) *background {
	t.Helper()
	args := append([]string{"exec"}, flags...)
	args = append(args, p, "--", "bash", "-c", `echo in-first > "$HOME/mark"; touch "$0/started"; exec sleep 300`, p)
	bg := startBackground(t, o, args...)
	waitFor(t, bg, filepath.Join(p, "started"))
	return bg
}

// One sandbox per project: a second launch, `enter` and `exec` join the
// running one (its mounts, its environment, a working directory), `ps`
// lists it, `--new` and other settings start a separate one, `stop` ends it.
func TestBwrapOneSandboxPerProject(t *testing.T) {
	requireSandboxHost(t)
	buildJSON(t, runOpts{})
	p := project(t)
	first := firstSandbox(t, runOpts{env: []string{"PROBE_FIRST=first-env-value"}}, p, "--env", "PROBE_FIRST")

	entries := ps(t, runOpts{})
	var mine []psEntry
	for _, e := range entries {
		if e.Project == p {
			mine = append(mine, e)
		}
	}
	// The sandbox is its supervisor's, which counts this one session.
	if len(mine) != 1 || mine[0].Backend != "bubblewrap" || !isSupervisor(mine[0].PID) || mine[0].Sessions != 1 || !strings.HasPrefix(mine[0].Closure, "/nix/store/") {
		t.Fatalf("ps --json: %+v", entries)
	}
	if r := run(t, runOpts{}, "ps"); !strings.Contains(r.stdout, p) || !strings.Contains(r.stdout, "bubblewrap") {
		t.Errorf("ps: %s", r)
	}

	// A second launch with the same settings joins; its own environment
	// lacks PROBE_FIRST, the joined process has the sandbox's.
	probe := fmt.Sprintf(`cat ~/mark; echo "env=$PROBE_FIRST"; python3 -c 'import os; print("cwd=" + os.getcwd())'
tr '\0' ' ' < /proc/1/cmdline; echo; kill -0 %d 2>/dev/null && echo SIGNALLED-HOST; exit 3`, os.Getpid())
	r := run(t, runOpts{}, "exec", "--env", "PROBE_FIRST", p, "--", "bash", "-c", probe)
	if r.code != 3 {
		t.Fatalf("joined exec: want its exit status 3: %s", r)
	}
	for _, want := range []string{"in-first", "env=first-env-value", "cwd=" + p, "bwrap"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("joined exec: missing %q:\n%s", want, r)
		}
	}
	if strings.Contains(r.stdout, "SIGNALLED-HOST") {
		t.Error("a joined process can signal a host process")
	}

	// enter: a command, and a login shell reading stdin; through a symlink
	// to the project too.
	link := filepath.Join(filepath.Dir(p), "link")
	os.Symlink(p, link)
	r = run(t, runOpts{}, "enter", link, "--", "cat", filepath.Join("/proc/self/cwd", "started"))
	if r.code != 0 {
		t.Errorf("enter with a command: %s", r)
	}
	r = run(t, runOpts{stdin: "cat ~/mark; echo sandbox=$CLAUDE_SANDBOX; pwd; exit 5\n"}, "enter", p)
	if r.code != 5 || !strings.Contains(r.stdout, "in-first") || !strings.Contains(r.stdout, "sandbox=1") || !strings.Contains(r.stdout, p) {
		t.Errorf("enter (shell): %s", r)
	}

	// --new, and other settings, start separate sandboxes.
	noMark := `cat ~/mark 2>/dev/null || echo no-mark`
	if r = run(t, runOpts{}, "exec", "--new", "--env", "PROBE_FIRST", p, "--", "bash", "-c", noMark); !strings.Contains(r.stdout, "no-mark") {
		t.Errorf("--new joined the running sandbox: %s", r)
	}
	if r = run(t, runOpts{}, "exec", "--no-network", "--env", "PROBE_FIRST", p, "--", "bash", "-c", noMark); !strings.Contains(r.stdout, "no-mark") {
		t.Errorf("a launch with --no-network joined a sandbox with the network on: %s", r)
	}

	// stop ends it; ps forgets it; a second stop says nothing runs.
	if r = run(t, runOpts{}, "stop", p); r.code != 0 || !strings.Contains(r.stdout, "stopped") {
		t.Fatalf("stop: %s", r)
	}
	first.wait(t, 15*time.Second)
	for _, e := range ps(t, runOpts{}) {
		if e.Project == p {
			t.Errorf("ps still lists the stopped sandbox: %+v", e)
		}
	}
	if r = run(t, runOpts{}, "stop", p); r.code != 75 || !strings.Contains(r.stderr, "no sandbox is running") || !strings.Contains(r.stderr, "hint:") {
		t.Errorf("stop with nothing running: %s", r)
	}
	if r = run(t, runOpts{}, "enter", p); r.code != 75 || !strings.Contains(r.stderr, "no sandbox is running") {
		t.Errorf("enter with nothing running: %s", r)
	}
}

// A launch killed with SIGKILL ends its session, and with it the sandbox it
// was the only session of; its registry entry goes, and the next launch
// starts afresh.
func TestBwrapKilledSandboxIsCleanedUp(t *testing.T) {
	requireSandboxHost(t)
	buildJSON(t, runOpts{})
	p := project(t)
	first := firstSandbox(t, runOpts{}, p)
	records := filepath.Join(stateDir(sharedDirs(), p), "sandboxes")
	if entries, _ := os.ReadDir(records); len(entries) != 1 {
		t.Fatalf("want one registry entry while it runs: %v", entries)
	}
	first.cmd.Process.Signal(syscall.SIGKILL)
	first.wait(t, 10*time.Second)

	r := sh(t, runOpts{}, p, `cat ~/mark 2>/dev/null || echo fresh-sandbox`)
	if r.code != 0 || !strings.Contains(r.stdout, "fresh-sandbox") {
		t.Fatalf("after SIGKILL the next launch did not start afresh: %s", r)
	}
	// Its supervisor, and with it every process of the sandbox, is gone
	// once the sandbox has ended.
	waitNoRecords(t, records, 10*time.Second)
	for _, e := range ps(t, runOpts{}) {
		if e.Project == p {
			t.Errorf("ps lists the killed sandbox: %+v", e)
		}
	}
}

// --tmux: the tmux server's socket is in the project state directory, so a
// tmux on the host reaches the session inside; Claude Code gets the
// sandbox notice either way.
func TestBwrapTmuxSocketAndNotice(t *testing.T) {
	requireSandboxHost(t)
	testenv.RequireProgram(t, "tmux")
	buildJSON(t, runOpts{})
	p := project(t)

	r := run(t, runOpts{}, "--tmux", "--dry-run", p, "--", "--model", "x")
	var inv struct{ Session []string }
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &inv) != nil || len(inv.Session) < 3 {
		t.Fatalf("--tmux --dry-run: %s", r)
	}
	cmd := strings.Join(inv.Session, " ")
	if !strings.Contains(cmd, "tmux -S /run/claude-sandbox/tmux/socket new-session -A -s claude -- ") ||
		!strings.Contains(cmd, "/bin/claude --append-system-prompt") || !strings.HasSuffix(cmd, "--model x") {
		t.Errorf("--tmux command: %q", cmd)
	}
	notice := inv.Session[len(inv.Session)-3]
	if !strings.Contains(notice, "claude-sandbox") || !strings.Contains(notice, p) {
		t.Errorf("notice: %q", notice)
	}

	bg := startBackground(t, runOpts{}, "exec", p, "--", "bash", "-c",
		`tmux -S /run/claude-sandbox/tmux/socket new-session -d -s probe "sleep 300" && touch "$0/started"; exec sleep 300`, p)
	waitFor(t, bg, filepath.Join(p, "started"))
	sock := filepath.Join(stateDir(sharedDirs(), p), "tmux", "socket")
	out, err := exec.Command("tmux", "-S", sock, "list-sessions", "-F", "#{session_name}").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "probe" {
		t.Fatalf("tmux on the host through %s: %v %s", sock, err, out)
	}
}

// Launches of one project at once: each either starts the sandbox or joins
// it, and a join that finds the sandbox just ended starts one instead. None
// fails for it, and none is killed because another ended: a sandbox lives
// as long as its last session.
func TestBwrapConcurrentLaunchesOfOneProject(t *testing.T) {
	requireSandboxHost(t)
	buildJSON(t, runOpts{})
	p := project(t)
	results := make([]result, 8)
	done := make(chan int)
	for i := range results {
		go func() {
			results[i] = run(t, runOpts{}, "exec", p, "--", "bash", "-c", fmt.Sprintf("echo launch-%d", i))
			done <- i
		}()
	}
	for range results {
		<-done
	}
	for i, r := range results {
		if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("launch-%d", i)) {
			t.Errorf("launch %d: %s", i, r)
		}
	}
}
