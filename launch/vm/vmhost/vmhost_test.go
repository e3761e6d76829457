package vmhost

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/claude-sandbox/claude-sandbox/internal/execstream"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/agent"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// fakeQMP serves QMP on a Unix socket the way QEMU does, or (silent) accepts
// and never answers, as a wedged QEMU would.
func fakeQMP(t *testing.T, path string, silent bool) <-chan string {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	cmds := make(chan string, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				if silent {
					time.Sleep(time.Minute)
					return
				}
				c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}` + "\n"))
				// QMP is a stream of JSON values, not lines: go-qemu sends
				// commands without a newline.
				dec := json.NewDecoder(c)
				for {
					var cmd struct{ Execute string }
					if dec.Decode(&cmd) != nil {
						return
					}
					cmds <- cmd.Execute
					switch cmd.Execute {
					case "query-status":
						c.Write([]byte(`{"return": {"running": true, "singlestep": false, "status": "running"}}` + "\n"))
					case "query-kvm":
						c.Write([]byte(`{"return": {"enabled": false, "present": true}}` + "\n"))
					default:
						c.Write([]byte(`{"return": {}}` + "\n"))
					}
				}
			}(c)
		}
	}()
	return cmds
}

func TestQMPWedgedQEMUDoesNotHang(t *testing.T) {
	old := qmpTimeout
	qmpTimeout = 300 * time.Millisecond
	defer func() { qmpTimeout = old }()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	fakeQMP(t, sock, true)
	start := time.Now()
	if _, err := dialQMP(context.Background(), sock); err == nil {
		t.Fatal("a silent QMP socket was taken for QEMU")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("gave up after %s, want about %s", d, qmpTimeout)
	}
}

// fakeQEMU is a stand-in for qemu-system-*: a script that plays a guest on
// the console (its stdout) and stays until killed (or exits).
func fakeQEMU(t *testing.T, script string) []string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{p}
}

func testSpec(t *testing.T, accel string, qemu []string) control.VMSpec {
	dir := t.TempDir()
	return control.VMSpec{QEMU: qemu, Env: []string{"PATH=/usr/bin:/bin"}, RunDir: dir, Accel: accel,
		KeepBootLog: filepath.Join(t.TempDir(), "vm-boot.log")}
}

func waitFault(t *testing.T, v *VM) control.Fault {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := v.Wait(ctx)
	var fe *FaultError
	if !errors.As(err, &fe) {
		t.Fatalf("Wait = %v, want a start fault", err)
	}
	return fe.Fault
}

func TestBootFailureSaysWhy(t *testing.T) {
	v, err := Start(context.Background(), testSpec(t, "tcg", fakeQEMU(t, `echo 'stage 1: cannot mount csb-meta'; exit 0`)), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := waitFault(t, v)
	if f.Kind != control.FaultStart || !strings.Contains(f.Reason, "cannot mount csb-meta") || f.Log == "" {
		t.Fatalf("fault = %+v, want the guest's last line and a kept boot log", f)
	}
}

func TestStuckKVMGuest(t *testing.T) {
	old := bootWatchdog
	bootWatchdog = 500 * time.Millisecond
	defer func() { bootWatchdog = old }()
	v, err := Start(context.Background(), testSpec(t, "kvm", fakeQEMU(t, `printf 'SeaBIOS\nBooting from ROM..\n'; sleep 30`)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if f := waitFault(t, v); f.Kind != control.FaultNoKVM {
		t.Fatalf("fault = %+v, want no KVM", f)
	}
	v, err = Start(context.Background(), testSpec(t, "kvm", fakeQEMU(t, `echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2; exit 134`)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if f := waitFault(t, v); f.Kind != control.FaultNoKVM || !strings.Contains(f.Reason, "MSR") {
		t.Fatalf("QEMU's KVM error: fault = %+v", f)
	}
}

// fakeGuest plays the guest's side of the agent port: QEMU's chardev
// socket, a yamux server, the ready stream, and sessions that print their
// command line and exit with its length.
func fakeGuest(t *testing.T, dir string, ready agent.Ready) {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(dir, AgentSocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		mux, _ := yamux.Server(c, agent.MuxConfig())
		st, _ := mux.Open()
		io.WriteString(st, agent.StreamReady+"\n")
		json.NewEncoder(st).Encode(ready)
		st.Close()
		for {
			s, err := mux.Accept()
			if err != nil {
				return
			}
			go func(s net.Conn) {
				defer s.Close()
				r, w := execstream.NewReader(s), execstream.NewWriter(s)
				req, err := r.ReadRequest()
				if err != nil {
					return
				}
				w.Write(execstream.KindStarted, nil)
				w.Data(execstream.KindStdout, []byte(strings.Join(req.Argv, " ")+"\n"))
				w.Exit(len(req.Argv))
			}(s)
		}
	}()
}

// TestExecRelaysASession: a launcher's exec request on the control
// connection is answered once the agent is ready, and the session's
// frames then pass both ways untouched; after the exit status the
// launcher's end of frames hands the connection back to control messages.
func TestExecRelaysASession(t *testing.T) {
	spec := testSpec(t, "tcg", fakeQEMU(t, `sleep 30`))
	fakeGuest(t, spec.RunDir, agent.Ready{OK: true})
	v, err := Start(context.Background(), spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.kill()
	a, b := net.Pipe()
	leaving := make(chan bool, 1)
	go func() { leaving <- v.Exec(context.Background(), control.NewConn(b)) }()
	c := control.NewConn(a)
	var reply control.Reply
	if err := c.Receive(context.Background(), &reply); err != nil || !reply.OK {
		t.Fatalf("reply = %+v, %v", reply, err)
	}
	w, r := execstream.NewWriter(c.Stream()), execstream.NewReader(c.Stream())
	w.Request(execstream.Request{Argv: []string{"echo", "a", "b"}})
	var out string
	for {
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if f.Kind == execstream.KindStdout {
			out += string(f.Data)
		}
		if st, ok := f.Status(); ok {
			if st != 3 || out != "echo a b\n" {
				t.Errorf("status %d, output %q", st, out)
			}
			break
		}
	}
	if err := w.End(); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-leaving:
		if !l {
			t.Error("Exec did not hand the connection back after the launcher's end of frames")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Exec did not return after the launcher's end of frames")
	}
}

// TestExecGuestSetUpFailed: a guest whose agent could not set it up
// refuses sessions with its reason.
func TestExecGuestSetUpFailed(t *testing.T) {
	spec := testSpec(t, "tcg", fakeQEMU(t, `sleep 30`))
	fakeGuest(t, spec.RunDir, agent.Ready{Error: "cannot mount the project"})
	v, err := Start(context.Background(), spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.kill()
	if f := waitFault(t, v); !strings.Contains(f.Reason, "cannot mount the project") {
		t.Errorf("fault = %+v", f)
	}
	// What a session arriving while the supervisor ends is told.
	if f := v.Fault(); f == nil || !strings.Contains(f.Reason, "cannot mount the project") {
		t.Errorf("Fault() = %+v", f)
	}
}

func TestMakeStoreIsWholeOrNothing(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "nix-store.img")
	if err := MakeStore(context.Background(), "/bin/false", img, 64); err == nil {
		t.Fatal("a failing mkfs made a store")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a failed mkfs left %v", entries)
	}
	mkfs := ""
	for _, p := range []string{"/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4"} {
		if _, err := os.Stat(p); err == nil {
			mkfs = p
		}
	}
	if mkfs == "" {
		t.Skip("no mkfs.ext4 on this host")
	}
	if err := MakeStore(context.Background(), mkfs, img, 64); err != nil {
		t.Fatal(err)
	}
	n, err := StoreSize(img)
	if err != nil || n <= 0 || n > 64<<20 {
		t.Errorf("a new store takes %d bytes (%v): it must be sparse", n, err)
	}
}
