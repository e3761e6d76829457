package supervisor

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// fakeSandbox stands in for bwrap/nspawn/QEMU: the lifetime logic is
// tested here, the real sandboxes end to end in tests/.
type fakeSandbox struct {
	mu       sync.Mutex
	done     chan struct{}
	stopped  bool
	graceful bool
}

func newFake() *fakeSandbox { return &fakeSandbox{done: make(chan struct{})} }

func (f *fakeSandbox) Ready(context.Context) (int, uint64, error) { return 4242, 7, nil }
func (f *fakeSandbox) Done() <-chan struct{}                      { return f.done }
func (f *fakeSandbox) Stop(_ context.Context, graceful bool, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped, f.graceful = true, graceful
	return nil
}
func (f *fakeSandbox) state() (bool, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stopped, f.graceful
}

type harness struct {
	sv   *Supervisor
	sock string
	fake *fakeSandbox
	done chan error
	// first is the launcher's end of the first session.
	first net.Conn
}

func start(t *testing.T, withFirst bool, tweak ...func(*Supervisor)) *harness {
	t.Helper()
	sock := filepath.Join(t.TempDir(), control.SocketName)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{sock: sock, fake: newFake(), done: make(chan error, 1)}
	h.sv = &Supervisor{ID: "abc", Sandbox: h.fake, Control: ln, FirstSessionWait: 2 * time.Second, StopGrace: 100 * time.Millisecond}
	if withFirst {
		// A socket pair, as a launcher hands one over.
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		conn := func(fd int) net.Conn {
			f := os.NewFile(uintptr(fd), "pair")
			defer f.Close()
			c, err := net.FileConn(f)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		h.first = conn(fds[0])
		h.sv.First = control.NewConn(conn(fds[1]))
	}
	for _, f := range tweak {
		f(h.sv)
	}
	go func() { h.done <- h.sv.Run(context.Background()) }()
	return h
}

func (h *harness) join(t *testing.T) *control.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, r, err := control.Join(ctx, h.sock, control.Request{What: "test"})
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	if r.Target != 4242 || r.TargetStart != 7 {
		t.Fatalf("join reply %+v does not name the sandbox's target", r)
	}
	return c
}

func (h *harness) waitEnd(t *testing.T) {
	t.Helper()
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the supervisor did not end")
	}
}

func (h *harness) running(t *testing.T) {
	t.Helper()
	select {
	case err := <-h.done:
		t.Fatalf("the supervisor ended early: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestSandboxLivesAsLongAsItsLastSession(t *testing.T) {
	h := start(t, true)
	a := h.join(t)
	b := h.join(t)
	h.first.Close() // the launcher that started it ends first
	h.running(t)
	a.Close()
	h.running(t)
	if stopped, _ := h.fake.state(); stopped {
		t.Fatal("the sandbox was stopped while a session still ran")
	}
	b.Close()
	h.waitEnd(t)
	if stopped, graceful := h.fake.state(); !stopped || graceful {
		t.Fatalf("after the last session: stopped=%v graceful=%v, want stopped, not graceful (nothing is left to ask)", stopped, graceful)
	}
	// Once ended, a join is told so, and starts a sandbox of its own.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, _, err := control.Join(ctx, h.sock, control.Request{}); !errors.Is(err, control.ErrEnded) {
		t.Fatalf("join after the end: %v, want ErrEnded", err)
	}
}

func TestStopIsGraceful(t *testing.T) {
	h := start(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := control.Once(ctx, h.sock, control.Request{Op: control.OpStop})
	if err != nil || !r.OK {
		t.Fatalf("stop: %+v, %v", r, err)
	}
	h.waitEnd(t)
	if stopped, graceful := h.fake.state(); !stopped || !graceful {
		t.Fatalf("stop: stopped=%v graceful=%v", stopped, graceful)
	}
}

func TestSandboxEndingByItselfEndsTheSupervisor(t *testing.T) {
	h := start(t, true)
	close(h.fake.done)
	h.waitEnd(t)
}

func TestNoSessionEver(t *testing.T) {
	h := start(t, false, func(s *Supervisor) { s.FirstSessionWait = 50 * time.Millisecond })
	select {
	case err := <-h.done:
		if err == nil {
			t.Fatal("a sandbox no session ever joined ended without saying why")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a sandbox no session joined lingered")
	}
}

func TestStatus(t *testing.T) {
	h := start(t, true)
	a := h.join(t)
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := control.Once(ctx, h.sock, control.Request{Op: control.OpStatus})
	if err != nil || r.Status == nil {
		t.Fatalf("status: %+v, %v", r, err)
	}
	if r.Status.Sessions != 2 || r.Status.ID != "abc" {
		t.Fatalf("status %+v, want 2 sessions of abc", r.Status)
	}
}

func TestConcurrentJoinsAndLeaves(t *testing.T) {
	h := start(t, true)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, _, err := control.Join(ctx, h.sock, control.Request{})
			if err != nil {
				t.Errorf("join: %v", err)
				return
			}
			time.Sleep(20 * time.Millisecond)
			c.Close()
		}()
	}
	wg.Wait()
	h.running(t) // the first session still holds it
	h.first.Close()
	h.waitEnd(t)
}

// A launch whose command has ended leaves; the last one is answered only
// once the sandbox is gone and the supervisor's last words are written,
// so the launch returns with nothing of the sandbox left behind.
func TestLastLeaveIsAnsweredAfterTheEnd(t *testing.T) {
	var mu sync.Mutex
	afterEnd := false
	h := start(t, true, func(sv *Supervisor) {
		sv.AfterEnd = func(error) { mu.Lock(); afterEnd = true; mu.Unlock() }
	})
	second := h.join(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r, err := second.Call(ctx, control.Request{Op: control.OpLeave}); err != nil || !r.OK {
		t.Fatalf("leaving while another session remains: %+v, %v", r, err)
	}
	if stopped, _ := h.fake.state(); stopped {
		t.Fatal("a session left and the sandbox stopped while the first session remained")
	}
	r, err := control.NewConn(h.first).Call(ctx, control.Request{Op: control.OpLeave})
	if err != nil || !r.OK {
		t.Fatalf("the last session's leave: %+v, %v", r, err)
	}
	mu.Lock()
	ended := afterEnd
	mu.Unlock()
	if stopped, _ := h.fake.state(); !stopped || !ended {
		t.Fatalf("the last leave was answered before the end: sandbox stopped %v, last words %v", stopped, ended)
	}
	h.waitEnd(t)
}

// A launch killed while the supervisor was still taking its door (it never
// reads the answer) has ended its session: the sandbox ends with it.
func TestLauncherGoneBeforeTheDoorsAnswer(t *testing.T) {
	h := start(t, true, func(sv *Supervisor) {
		sv.Doors = map[string]func(*os.File) error{"net": func(*os.File) error {
			time.Sleep(200 * time.Millisecond)
			return nil
		}}
	})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := control.NewConn(h.first).SendFile(control.Request{Op: control.OpDoor, Service: "net"}, r); err != nil {
		t.Fatal(err)
	}
	h.first.Close()
	h.waitEnd(t)
}
