package tests

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// listener is a fake host service: a Unix socket that records what each
// connection sends.
type listener struct {
	ln  net.Listener
	mu  sync.Mutex
	got []string
}

func listen(t *testing.T, path string) *listener {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("listening on %s: %v", path, err)
	}
	l := &listener{ln: ln}
	t.Cleanup(func() { ln.Close(); os.Remove(path) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			n, _ := c.Read(buf)
			l.mu.Lock()
			l.got = append(l.got, string(buf[:n]))
			l.mu.Unlock()
			c.Close()
		}
	}()
	return l
}

func (l *listener) received() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.got, ",")
}

// connectProbe runs inside: for each resource, it finds the socket the way
// a client does (from the variables the sandbox sets), connects and sends
// the resource's name.
const connectProbe = `
import os, socket
e = os.environ
def conn(name, path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(name.encode())
        print("connected", name, path)
    except Exception as x:
        print("FAILED", name, path, x)
    finally:
        s.close()
run = e.get("XDG_RUNTIME_DIR", "")
if "DISPLAY" in e:
    conn("x11", "/tmp/.X11-unix/X" + e["DISPLAY"].split(":")[1].split(".")[0])
if "WAYLAND_DISPLAY" in e:
    conn("wayland", os.path.join(run, e["WAYLAND_DISPLAY"]))
if "DBUS_SESSION_BUS_ADDRESS" in e:
    conn("dbus-session", e["DBUS_SESSION_BUS_ADDRESS"].split("path=")[1].split(",")[0])
if os.path.exists("/run/dbus/system_bus_socket"):
    conn("dbus-system", "/run/dbus/system_bus_socket")
if "PULSE_SERVER" in e:
    conn("pulseaudio", e["PULSE_SERVER"][len("unix:"):])
if "PIPEWIRE_REMOTE" in e:
    conn("pipewire", e["PIPEWIRE_REMOTE"])
if "SSH_AUTH_SOCK" in e:
    conn("ssh-agent", e["SSH_AUTH_SOCK"])
if os.path.exists(os.path.join(run, "keyring", "control")):
    conn("keyring", os.path.join(run, "keyring", "control"))
if "XAUTHORITY" in e:
    print("xauthority", open(e["XAUTHORITY"]).read().strip())
for k in sorted(e):
    print("env", k)
`

// Every desktop socket the host names is forwarded, and a client inside
// reaches the host's listener through it.
func TestBwrapForwardsDesktopSockets(t *testing.T) {
	requireSandboxHost(t)
	buildJSON(t, runOpts{}) // so that stderr below is the launch's alone
	p := project(t)
	// Socket paths must stay short (108 bytes): a directory right under /tmp.
	host, err := os.MkdirTemp("/tmp", "csb-desktop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(host) })
	os.Chmod(host, 0o755)
	rundir := filepath.Join(host, "run")

	// X11 sockets live at a fixed path; a display number nobody uses.
	if _, err := os.Stat("/tmp/.X11-unix"); err != nil {
		// As an X server would make it: world-writable and sticky.
		if err := os.Mkdir("/tmp/.X11-unix", 0o755); err != nil {
			t.Fatalf("creating /tmp/.X11-unix: %v", err)
		}
		os.Chmod("/tmp/.X11-unix", os.ModeSticky|0o777)
	}
	display := 4000 + os.Getpid()%1000
	xsock := fmt.Sprintf("/tmp/.X11-unix/X%d", display)
	xauth := filepath.Join(host, "xauth")
	os.WriteFile(xauth, []byte("PROBE-COOKIE\n"), 0o600)

	services := map[string]*listener{
		"x11":          listen(t, xsock),
		"wayland":      listen(t, filepath.Join(rundir, "wayland-probe")),
		"dbus-session": listen(t, filepath.Join(rundir, "bus")),
		"dbus-system":  listen(t, filepath.Join(host, "system_bus_socket")),
		"pulseaudio":   listen(t, filepath.Join(rundir, "pulse", "native")),
		"pipewire":     listen(t, filepath.Join(rundir, "pipewire-0")),
		"ssh-agent":    listen(t, filepath.Join(host, "agent.sock")),
		"keyring":      listen(t, filepath.Join(rundir, "keyring", "control")),
	}
	env := []string{
		fmt.Sprintf("DISPLAY=:%d", display), "XAUTHORITY=" + xauth,
		"XDG_RUNTIME_DIR=" + rundir, "WAYLAND_DISPLAY=wayland-probe",
		"DBUS_SESSION_BUS_ADDRESS=unix:path=" + filepath.Join(rundir, "bus") + ",guid=0123",
		"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + filepath.Join(host, "system_bus_socket"),
		"SSH_AUTH_SOCK=" + filepath.Join(host, "agent.sock"),
	}
	os.WriteFile(filepath.Join(p, "probe.py"), []byte(connectProbe), 0o644)
	r := run(t, runOpts{env: env}, "exec", p, "--", "python3", "probe.py")
	if r.code != 0 || strings.Contains(r.stdout, "FAILED") {
		t.Fatalf("connecting from inside: %s", r)
	}
	for name, l := range services {
		want := name
		if name == "ssh-agent" {
			// The supervisor's filtering agent answers inside; what is not
			// an agent request never reaches the host's agent.
			want = ""
		}
		if got := l.received(); got != want {
			t.Errorf("%s: the host listener received %q, want %q\n%s", name, got, want, r.stdout)
		}
	}
	if !strings.Contains(r.stdout, "connected ssh-agent") {
		t.Errorf("no SSH agent inside: %s", r)
	}
	if !strings.Contains(r.stdout, "xauthority PROBE-COOKIE") {
		t.Errorf("XAUTHORITY not readable inside: %s", r)
	}
	if r.stderr != "" {
		t.Errorf("forwarding printed something: %s", r.stderr)
	}

	// --no-desktop: only the SSH agent (and the Nix daemon) remain.
	for _, l := range services {
		l.mu.Lock()
		l.got = nil
		l.mu.Unlock()
	}
	r = run(t, runOpts{env: env}, "exec", "--no-desktop", p, "--", "python3", "probe.py")
	if r.code != 0 {
		t.Fatalf("--no-desktop: %s", r)
	}
	for name, l := range services {
		if got := l.received(); got != "" {
			t.Errorf("--no-desktop: %s received %q", name, got)
		}
	}
	if !strings.Contains(r.stdout, "connected ssh-agent") {
		t.Errorf("--no-desktop: no SSH agent inside: %s", r)
	}
}

// Absent sockets are skipped quietly: the variables point nowhere on the
// host, the sandbox starts, says nothing, and sets none of them inside.
func TestBwrapSkipsAbsentSocketsQuietly(t *testing.T) {
	requireSandboxHost(t)
	buildJSON(t, runOpts{})
	p := project(t)
	nowhere := filepath.Join(t.TempDir(), "absent")
	env := []string{
		"DISPLAY=:4999", "WAYLAND_DISPLAY=wayland-absent", "XDG_RUNTIME_DIR=" + nowhere,
		"DBUS_SESSION_BUS_ADDRESS=unix:path=" + nowhere + "/bus", "DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + nowhere + "/system",
		"PULSE_SERVER=unix:" + nowhere + "/pulse", "PIPEWIRE_REMOTE=" + nowhere + "/pw", "SSH_AUTH_SOCK=" + nowhere + "/agent",
	}
	os.WriteFile(filepath.Join(p, "probe.py"), []byte(connectProbe), 0o644)
	os.Remove("/tmp/.X11-unix/X4999")
	r := run(t, runOpts{env: env}, "exec", "--no-nix-daemon", p, "--", "python3", "probe.py")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("with absent sockets: %s", r)
	}
	for _, name := range []string{"DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "PULSE_SERVER", "PIPEWIRE_REMOTE", "SSH_AUTH_SOCK", "XAUTHORITY", "NIX_REMOTE"} {
		if strings.Contains(r.stdout, "env "+name+"\n") {
			t.Errorf("%s is set inside though the host has no such socket", name)
		}
	}
	if strings.Contains(r.stdout, "connected") {
		t.Errorf("something was forwarded: %s", r.stdout)
	}
}

// The Nix daemon: its socket inside, NIX_REMOTE=daemon, and the daemon
// answers the worker protocol's handshake through it. (The fixture's nix
// is a placeholder: no nix command runs here.)
func TestBwrapForwardsTheNixDaemon(t *testing.T) {
	requireSandboxHost(t)
	if _, err := os.Stat("/nix/var/nix/daemon-socket/socket"); err != nil {
		t.Skip("no Nix daemon on this host (the root pass can run without one)")
	}
	p := project(t)
	handshake := `
import os, socket, struct
print("NIX_REMOTE=" + os.environ.get("NIX_REMOTE", ""))
s = socket.socket(socket.AF_UNIX); s.settimeout(10)
s.connect("/nix/var/nix/daemon-socket/socket")
s.sendall(struct.pack("<Q", 0x6e697863))                 # WORKER_MAGIC_1
magic2, = struct.unpack("<Q", s.recv(8, socket.MSG_WAITALL))
print("daemon answered %#x" % magic2)                    # WORKER_MAGIC_2 = 0x6478696f
`
	os.WriteFile(filepath.Join(p, "nix.py"), []byte(handshake), 0o644)
	r := run(t, runOpts{}, "exec", p, "--", "python3", "nix.py")
	if r.code != 0 || !strings.Contains(r.stdout, "NIX_REMOTE=daemon") || !strings.Contains(r.stdout, "daemon answered 0x6478696f") {
		t.Fatalf("the Nix daemon through the sandbox: %s", r)
	}
	r = run(t, runOpts{}, "exec", "--no-nix-daemon", p, "--", "bash", "-c", `echo "remote=$NIX_REMOTE"; test -e /nix/var/nix/daemon-socket/socket && echo SOCKET-PRESENT; true`)
	if r.code != 0 || !strings.Contains(r.stdout, "remote=\n") || strings.Contains(r.stdout, "SOCKET-PRESENT") {
		t.Fatalf("--no-nix-daemon: %s", r)
	}
}
