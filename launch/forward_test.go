package launch_test

import (
	"reflect"
	"slices"
	"testing"

	. "github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/internal/launchtest"
)

var fakeHost = launchtest.Host

func TestHostForwardsEverythingPresent(t *testing.T) {
	h := fakeHost(map[string]string{
		"DISPLAY": ":3", "XAUTHORITY": "/home/u/.Xauth", "WAYLAND_DISPLAY": "wayland-1",
		"XDG_RUNTIME_DIR": "/run/user/1000", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus,guid=abc",
		"SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1", "GNOME_KEYRING_CONTROL": "/run/user/1000/keyring", "XDG_SESSION_TYPE": "wayland",
	}, []string{
		"/tmp/.X11-unix/X3", "/run/user/1000/wayland-1", "/run/user/1000/bus", "/run/dbus/system_bus_socket",
		"/run/user/1000/pulse/native", "/run/user/1000/pipewire-0", "/tmp/ssh-x/agent.1", "/nix/var/nix/daemon-socket/socket",
	}, []string{"/run/user/1000", "/run/user/1000/keyring", "/dev/dri"}, []string{"/home/u/.Xauth", "/run/opengl-driver"})
	f := h.Forwards(&Runtime{Home: "/home/u", Network: true, NixDaemon: true})
	want := map[string]string{
		"DISPLAY": ":3", "XAUTHORITY": "/run/user/1000/Xauthority", "WAYLAND_DISPLAY": "wayland-1",
		"XDG_RUNTIME_DIR": "/run/user/1000", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus",
		"PULSE_SERVER": "unix:/run/user/1000/pulse/native", "PIPEWIRE_REMOTE": "/run/user/1000/pipewire-0",
		"GNOME_KEYRING_CONTROL": "/run/user/1000/keyring",
		"XDG_SESSION_TYPE":      "wayland",
	}
	for k, v := range want {
		if f.Env[k] != v {
			t.Errorf("%s = %q, want %q", k, f.Env[k], v)
		}
	}
	ro := func(src, dst string) Mount { return Mount{Kind: ROBind, Source: src, Dest: dst, Optional: true} }
	for _, m := range []Mount{
		{Kind: Tmpfs, Dest: "/tmp/.X11-unix"},
		ro("/tmp/.X11-unix/X3", "/tmp/.X11-unix/X3"),
		ro("/run/user/1000/wayland-1", "/run/user/1000/wayland-1"),
		ro("/run/dbus/system_bus_socket", "/run/dbus/system_bus_socket"),
		{Kind: DevBind, Source: "/dev/dri", Dest: "/dev/dri", Optional: true},
		ro("/run/opengl-driver", "/run/opengl-driver"),
		{Kind: Dir, Dest: "/run/user/1000/keyring", Mode: 0o700},
		ro("/run/user/1000/keyring/control", "/run/user/1000/keyring/control"),
		ro("/run/user/1000/keyring/pkcs11", "/run/user/1000/keyring/pkcs11"),
	} {
		if mountIndex(f.Mounts, m) < 0 {
			t.Errorf("missing %+v in %+v", m, f.Mounts)
		}
	}
	if mountIndex(f.Mounts, Mount{Kind: Tmpfs, Dest: "/tmp/.X11-unix"}) > mountIndex(f.Mounts, ro("/tmp/.X11-unix/X3", "/tmp/.X11-unix/X3")) {
		t.Error("the X11 socket is mounted before the tmpfs that holds it")
	}

	// The host's agent is found (doctor says so) but never bound: the
	// supervisor's filtering agent stands in front of it (SSHAgentMounts).
	if f.Env["SSH_AUTH_SOCK"] != "" {
		t.Errorf("the host's SSH agent is forwarded raw: %v", f.Env["SSH_AUTH_SOCK"])
	}
	for _, m := range f.Mounts {
		if m.Source == "/tmp/ssh-x/agent.1" || m.Source == "/run/user/1000/keyring" || m.Source == "/run/user/1000/keyring/ssh" {
			t.Errorf("the host's SSH agent socket is bound: %+v", m)
		}
	}
	found := false
	for _, fw := range f.Found {
		found = found || fw.What == "ssh-agent" && fw.Source == "/tmp/ssh-x/agent.1"
	}
	if !found {
		t.Error("the host's SSH agent is not reported")
	}

	// --no-desktop keeps only the daemon; --no-nix-daemon drops that.
	f = h.Forwards(&Runtime{Home: "/home/u", NoDesktop: true})
	if f.Env["DISPLAY"] != "" || f.Env["NIX_REMOTE"] != "" {
		t.Errorf("--no-desktop --no-nix-daemon: %v", f.Env)
	}
}

// mountIndex is where want is in ms, or -1.
func mountIndex(ms []Mount, want Mount) int {
	return slices.IndexFunc(ms, func(m Mount) bool { return reflect.DeepEqual(m, want) })
}

func TestHostForwardsSkipsWhatIsAbsent(t *testing.T) {
	// Variables naming sockets that do not exist, and no runtime directory.
	h := fakeHost(map[string]string{
		"DISPLAY": ":9", "WAYLAND_DISPLAY": "wayland-0", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nope",
		"SSH_AUTH_SOCK": "/nope", "PULSE_SERVER": "unix:/nope",
	}, nil, nil, nil)
	f := h.Forwards(&Runtime{Home: "/home/u", Network: true, NixDaemon: true})
	if len(f.Mounts) != 0 {
		t.Errorf("mounts for absent resources: %+v", f.Mounts)
	}
	if len(f.Env) != 1 || f.Env["XDG_RUNTIME_DIR"] == "" {
		t.Errorf("variables for absent resources: %v", f.Env)
	}
}

// What lives in the host's network namespace (a TCP display, an abstract
// D-Bus socket) is never forwarded: no sandbox shares that namespace, in
// any network mode.
func TestHostForwardsNothingOfTheHostNetworkNamespace(t *testing.T) {
	h := fakeHost(map[string]string{"DISPLAY": "localhost:10.0", "DBUS_SESSION_BUS_ADDRESS": "unix:abstract=/tmp/dbus-x"}, nil, nil, nil)
	for _, network := range []bool{true, false} {
		f := h.Forwards(&Runtime{Network: network})
		if f.Env["DISPLAY"] != "" || f.Env["DBUS_SESSION_BUS_ADDRESS"] != "" {
			t.Errorf("network %v: a TCP display or abstract bus is set: %v", network, f.Env)
		}
	}
}

func TestX11AndDBusAddresses(t *testing.T) {
	for in, want := range map[string][2]any{
		":0": {"0", true}, "unix:1.0": {"1", true}, "localhost:10.0": {"10", false}, "x": {"", false}, ":a": {"", false},
	} {
		n, local := X11Display(in)
		if n != want[0] || local != want[1] {
			t.Errorf("X11Display(%q) = %q %v", in, n, local)
		}
	}
	if p, _ := DBusUnixAddress("tcp:host=x;unix:path=/run/a%20b/bus,guid=1"); p != "/run/a b/bus" {
		t.Errorf("dbus path = %q", p)
	}
	if _, abstract := DBusUnixAddress("unix:abstract=/tmp/x,guid=1"); !abstract {
		t.Error("abstract address not recognised")
	}
}

func TestConfigOfSeparatesWhatShapesTheSandbox(t *testing.T) {
	base := Runtime{Project: "/p", Home: "/home/u", Network: true, Protect: true, NixDaemon: true}
	same := base
	same.Shell, same.Command, same.Tmux = true, []string{"x"}, true
	if ConfigOf("bubblewrap", "/nix/store/a", &base) != ConfigOf("bubblewrap", "/nix/store/a", &same) {
		t.Error("the program run inside changed the configuration")
	}
	for name, change := range map[string]func(*Runtime){
		"network":   func(r *Runtime) { r.Network = false },
		"protect":   func(r *Runtime) { r.Protect = false },
		"unprotect": func(r *Runtime) { r.Unprotect = []string{".git"} },
		"env":       func(r *Runtime) { r.ExtraEnv = []string{"X"} },
		"gh-token":  func(r *Runtime) { r.GHToken = true },
		"desktop":   func(r *Runtime) { r.NoDesktop = true },
	} {
		r := base
		change(&r)
		if ConfigOf("bubblewrap", "/nix/store/a", &base) == ConfigOf("bubblewrap", "/nix/store/a", &r) {
			t.Errorf("%s does not change the configuration", name)
		}
	}
	if ConfigOf("bubblewrap", "/nix/store/a", &base) == ConfigOf("bubblewrap", "/nix/store/b", &base) {
		t.Error("the closure does not change the configuration")
	}
}

func TestSandboxEnvGHTokenOnlyOnRequest(t *testing.T) {
	host := map[string]string{"GH_TOKEN": "a", "GITHUB_TOKEN": "b"}
	rt := &Runtime{Home: "/home/u", User: "u", LookupEnv: env(host)}
	got, _ := SandboxEnv(handManifest(), rt)
	if slices.Contains(got, "GH_TOKEN=a") || slices.Contains(got, "GITHUB_TOKEN=b") {
		t.Error("a GitHub token crossed without --gh-token")
	}
	rt.GHToken = true
	got, _ = SandboxEnv(handManifest(), rt)
	if !slices.Contains(got, "GH_TOKEN=a") || !slices.Contains(got, "GITHUB_TOKEN=b") {
		t.Error("--gh-token did not pass the tokens")
	}
}
