package agent

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/execstream"
)

// testAgent serves sessions, as the guest's agent does, on one end of an
// in-memory yamux pair, and returns the host's end.
func testAgent(t *testing.T) (*yamux.Session, string) {
	t.Helper()
	dir := t.TempDir()
	// As Main does: a signal the agent catches reaches its commands at its
	// default; one ignored when this test started (under nohup) would stay
	// ignored in them, and sh cannot trap a signal ignored on entry.
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	t.Cleanup(func() { signal.Stop(hups) })
	a := &agent{cfg: &Config{UID: os.Getuid(), GID: os.Getgid(), Home: dir, Project: dir, User: "u",
		Env: []string{"PATH=/usr/bin:/bin", "FROM_SANDBOX=yes"}}, idle: make(chan struct{}, 1)}
	guest, host := net.Pipe()
	srv, err := yamux.Server(guest, MuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			st, err := srv.Accept()
			if err != nil {
				return
			}
			go a.serveSession(st)
		}
	}()
	cli, err := yamux.Client(host, MuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close(); srv.Close() })
	return cli, dir
}

type result struct {
	stdout, stderr string
	status         int
	started        bool
	errText        string
}

// run runs one session to its end, sending input (then its end) and, when
// sig is set, that signal once the command has started.
func run(t *testing.T, mux *yamux.Session, req execstream.Request, input string, sig unix.Signal) result {
	t.Helper()
	st, err := mux.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	w, r := execstream.NewWriter(st), execstream.NewReader(st)
	if err := w.Request(req); err != nil {
		t.Fatal(err)
	}
	var res result
	var once sync.Once
	signal := func() { w.Write(execstream.KindSignal, []byte{byte(sig)}) }
	for {
		f, err := r.Next()
		if err != nil {
			t.Fatalf("the session ended without a status: %v (%+v)", err, res)
		}
		switch f.Kind {
		case execstream.KindStarted:
			res.started = true
			if input != "" {
				w.Data(execstream.KindStdin, []byte(input))
			}
			if !req.TTY {
				w.Write(execstream.KindStdinEOF, nil)
			}
			if sig != 0 {
				// Once the command says it is ready (its first output),
				// or after a while for one that says nothing.
				time.AfterFunc(300*time.Millisecond, func() { once.Do(signal) })
			}
		case execstream.KindStdout:
			res.stdout += string(f.Data)
			if sig != 0 {
				once.Do(signal)
			}
		case execstream.KindStderr:
			res.stderr += string(f.Data)
		case execstream.KindError:
			res.errText = string(f.Data)
			return res
		case execstream.KindExit:
			res.status, _ = f.Status()
			return res
		}
	}
}

func TestSessionPipesStatusAndEnvironment(t *testing.T) {
	mux, dir := testAgent(t)
	r := run(t, mux, execstream.Request{Argv: []string{"sh", "-c", `cat; echo "err $FROM_SANDBOX" >&2; pwd; exit 42`}}, "from stdin\n", 0)
	if r.status != 42 || r.stdout != "from stdin\n"+dir+"\n" || r.stderr != "err yes\n" {
		t.Errorf("session = %+v", r)
	}
	r = run(t, mux, execstream.Request{Argv: []string{"sh", "-c", `echo "${FROM_SANDBOX:-unset} $OWN"`}, Env: []string{"PATH=/usr/bin:/bin", "OWN=mine"}}, "", 0)
	if r.stdout != "unset mine\n" {
		t.Errorf("a session's own environment: %q", r.stdout)
	}
	r = run(t, mux, execstream.Request{Argv: []string{"no-such-command-here"}}, "", 0)
	if r.errText == "" || !strings.Contains(r.errText, "not found") {
		t.Errorf("a missing command: %+v", r)
	}
}

func TestSessionTerminalAndSignal(t *testing.T) {
	mux, _ := testAgent(t)
	r := run(t, mux, execstream.Request{Argv: []string{"sh", "-c", `test -t 0 && test -t 1 && stty size`}, TTY: true, Rows: 33, Cols: 77}, "", 0)
	if r.status != 0 || !strings.Contains(r.stdout, "33 77") {
		t.Errorf("terminal session = %+v", r)
	}
	r = run(t, mux, execstream.Request{Argv: []string{"sh", "-c", `trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done`}}, "", unix.SIGTERM)
	if r.status != 3 || !strings.Contains(r.stdout, "got-term") {
		t.Errorf("SIGTERM from the host: %+v", r)
	}
	r = run(t, mux, execstream.Request{Argv: []string{"sleep", "30"}}, "", unix.SIGINT)
	if r.status != 128+int(unix.SIGINT) {
		t.Errorf("SIGINT from the host: status %d, want %d", r.status, 128+int(unix.SIGINT))
	}
}

// TestSessionsRunTogether: twenty sessions at once, each writing its line
// after a short sleep; one ending does not end another.
func TestSessionsRunTogether(t *testing.T) {
	mux, dir := testAgent(t)
	var wg sync.WaitGroup
	statuses := make([]int, 20)
	for i := range statuses {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r := run(t, mux, execstream.Request{Argv: []string{"sh", "-c", fmt.Sprintf("sleep 0.%d; echo line-%d >> lines", i%5, i)}}, "", 0)
			statuses[i] = r.status
		}(i)
	}
	wg.Wait()
	data, _ := os.ReadFile(filepath.Join(dir, "lines"))
	if n := strings.Count(string(data), "\n"); n != 20 {
		t.Errorf("%d lines written, want 20:\n%s", n, data)
	}
	for i, s := range statuses {
		if s != 0 {
			t.Errorf("session %d: status %d", i, s)
		}
	}
}

// TestSessionHostGoneHangsUp: a session whose host side vanishes is hung
// up: its command gets SIGHUP, as from a closing terminal.
func TestSessionHostGoneHangsUp(t *testing.T) {
	mux, dir := testAgent(t)
	st, _ := mux.Open()
	w := execstream.NewWriter(st)
	w.Request(execstream.Request{Argv: []string{"sh", "-c", `trap 'echo hup > hung-up; exit 1' HUP; echo ready; while :; do sleep 0.05; done`}})
	r := execstream.NewReader(st)
	for {
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if f.Kind == execstream.KindStdout {
			break // the trap is set
		}
	}
	st.Close()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if data, err := os.ReadFile(filepath.Join(dir, "hung-up")); err == nil && string(data) == "hup\n" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Error("the command was not hung up when its host went away")
}

func TestConfigRefusesWhatMustNotReachAMount(t *testing.T) {
	good := Config{User: "u", UID: 1000, GID: 1000, Home: "/home/u", Project: "/p"}
	if err := good.check(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(c *Config){
		"relative project":   func(c *Config) { c.Project = "p" },
		"user with a colon":  func(c *Config) { c.User = "u:0:0" },
		"home with newline":  func(c *Config) { c.Home = "/home/u\nroot" },
		"bind out of Mnt":    func(c *Config) { c.Binds = []Bind{{Share: "../../etc", Target: "/x"}} },
		"copy with a slash":  func(c *Config) { c.Copies = []Copy{{Name: "../run.json", Target: "/x"}} },
		"relative protected": func(c *Config) { c.Protect = []Protect{{Kind: ProtectReadOnly, Path: "p/.git/hooks"}} },
		"unknown protection": func(c *Config) { c.Protect = []Protect{{Kind: "overlay", Path: "/p/.git"}} },
		"link to nothing":    func(c *Config) { c.Protect = []Protect{{Kind: ProtectSymlink, Path: "/p/x"}} },
		"relative login":     func(c *Config) { c.Login = []string{"home/.claude/.credentials.json"} },
	} {
		c := good
		mutate(&c)
		if err := c.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
