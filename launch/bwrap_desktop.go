package launch

import (
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Host forwarding: the host's sockets and devices a desktop program needs
// (display, audio, session and system bus, keyring, GPU), the SSH agent and
// the Nix daemon. Each is forwarded only when it exists on the host, and is
// then placed at a fixed path inside (mostly under the sandbox's own
// XDG_RUNTIME_DIR), with the variable that names it set to that path.
// Nothing absent is mounted half-way and nothing is reported: a headless
// host simply gets a sandbox without a display.

// hostView is how forwarding looks at the host; tests replace it.
type hostView struct {
	lookupEnv func(string) (string, bool)
	stat      func(string) (fs.FileInfo, error)
	uid       int
}

func (h hostView) env(name string) string {
	v, _ := h.lookupEnv(name)
	return v
}

func (h hostView) isSocket(p string) bool {
	st, err := h.stat(p)
	return err == nil && st.Mode()&fs.ModeSocket != 0
}

func (h hostView) isDir(p string) bool {
	st, err := h.stat(p)
	return err == nil && st.IsDir()
}

func (h hostView) exists(p string) bool {
	_, err := h.stat(p)
	return err == nil
}

// runtimeDir is the host's XDG_RUNTIME_DIR, or systemd's default for it.
func (h hostView) runtimeDir() string {
	if d := h.env("XDG_RUNTIME_DIR"); filepath.IsAbs(d) {
		return d
	}
	if d := "/run/user/" + strconv.Itoa(h.uid); h.isDir(d) {
		return d
	}
	return ""
}

// forwards is what forwarding adds to a sandbox: bwrap mount arguments,
// variables to set, and the resources forwarded (what doctor reports).
type forwards struct {
	args []string
	env  map[string]string
	what []Forward
}

// Forward is one host resource a launch forwards into the sandbox.
type Forward struct {
	What   string // ssh-agent, nix-daemon, x11, wayland, dbus-session, dbus-system, pulseaudio, pipewire, keyring, gpu
	Source string // its host path; its address when it is reached over the network
	// NetworkOnly: reached through the host's network namespace (a TCP
	// display, an abstract D-Bus socket), so not with --no-network.
	NetworkOnly bool
}

// HostForwards is what a bubblewrap launch with rt's switches forwards from
// this host. doctor reports it, so that what it says is what a launch does.
func HostForwards(rt *Runtime) []Forward { return hostForwards(osHost(rt), rt).what }

func (f *forwards) found(what, source string) {
	f.what = append(f.what, Forward{What: what, Source: source})
}

func (f *forwards) bind(kind, src, dst string) { f.args = append(f.args, kind, src, dst) }

// sandboxRuntimeDir is XDG_RUNTIME_DIR inside: the path systemd would give
// the same uid, so programs that assume it find it.
func sandboxRuntimeDir(uid int) string { return "/run/user/" + strconv.Itoa(uid) }

// hostForwards decides every forwarded resource. network says whether the
// sandbox shares the host's network namespace, which abstract Unix sockets
// (and TCP displays) need.
func hostForwards(h hostView, rt *Runtime) forwards {
	f := forwards{env: map[string]string{}}
	run := sandboxRuntimeDir(h.uid)
	hostRun := h.runtimeDir()
	f.env["XDG_RUNTIME_DIR"] = run

	// The SSH agent, so git over SSH can use the user's keys without the
	// sandbox holding them in memory.
	if sock := h.env("SSH_AUTH_SOCK"); filepath.IsAbs(sock) && h.isSocket(sock) {
		f.bind("--ro-bind-try", sock, run+"/ssh-agent")
		f.env["SSH_AUTH_SOCK"] = run + "/ssh-agent"
		f.found("ssh-agent", sock)
	}

	// The Nix daemon: the store stays read-only, builds go through the
	// daemon like any multi-user Nix client's.
	if rt.NixDaemon {
		sock := h.env("NIX_DAEMON_SOCKET_PATH")
		if !filepath.IsAbs(sock) {
			sock = "/nix/var/nix/daemon-socket/socket"
		}
		if h.isSocket(sock) {
			f.bind("--ro-bind-try", sock, "/nix/var/nix/daemon-socket/socket")
			f.env["NIX_REMOTE"] = "daemon"
			f.found("nix-daemon", sock)
		}
	}

	if rt.NoDesktop {
		return f
	}

	// X11: the display's socket, and the cookie that authorises it.
	if display := h.env("DISPLAY"); display != "" {
		if n, local := x11Display(display); local {
			sock := "/tmp/.X11-unix/X" + n
			if h.isSocket(sock) {
				// A tmpfs of its own: /tmp is the project's persistent one,
				// and the socket's mount point should not be left in it.
				f.args = append(f.args, "--tmpfs", "/tmp/.X11-unix")
				f.bind("--ro-bind-try", sock, sock)
				f.env["DISPLAY"] = display
				f.found("x11", sock)
			}
		} else if rt.Network {
			// host:N is TCP (ssh -X): reachable only over the shared network.
			f.env["DISPLAY"] = display
			f.what = append(f.what, Forward{What: "x11", Source: display, NetworkOnly: true})
		}
		if _, ok := f.env["DISPLAY"]; ok {
			xauth := h.env("XAUTHORITY")
			if !filepath.IsAbs(xauth) {
				xauth = filepath.Join(rt.Home, ".Xauthority")
			}
			if h.exists(xauth) {
				f.bind("--ro-bind-try", xauth, run+"/Xauthority")
				f.env["XAUTHORITY"] = run + "/Xauthority"
			}
		}
	}

	// Wayland.
	if wl := h.env("WAYLAND_DISPLAY"); wl != "" {
		sock := wl
		if !filepath.IsAbs(sock) && hostRun != "" {
			sock = filepath.Join(hostRun, wl)
		}
		if filepath.IsAbs(sock) && h.isSocket(sock) {
			name := filepath.Base(sock)
			f.bind("--ro-bind-try", sock, run+"/"+name)
			f.env["WAYLAND_DISPLAY"] = name
			f.found("wayland", sock)
		}
	}
	if _, ok := f.env["DISPLAY"]; ok || f.env["WAYLAND_DISPLAY"] != "" {
		for _, name := range []string{"XDG_SESSION_TYPE", "XDG_CURRENT_DESKTOP"} {
			if v := h.env(name); v != "" {
				f.env[name] = v
			}
		}
	}

	// The D-Bus session bus.
	addr := h.env("DBUS_SESSION_BUS_ADDRESS")
	if addr == "" && hostRun != "" {
		addr = "unix:path=" + hostRun + "/bus"
	}
	if path, abstract := dbusUnixAddress(addr); path != "" && h.isSocket(path) {
		f.bind("--ro-bind-try", path, run+"/bus")
		f.env["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=" + run + "/bus"
		f.found("dbus-session", path)
	} else if abstract && rt.Network {
		// Abstract sockets live in the network namespace, shared here.
		f.env["DBUS_SESSION_BUS_ADDRESS"] = addr
		f.what = append(f.what, Forward{What: "dbus-session", Source: addr, NetworkOnly: true})
	}

	// The D-Bus system bus, at its standard path.
	sysAddr := h.env("DBUS_SYSTEM_BUS_ADDRESS")
	if sysAddr == "" {
		sysAddr = "unix:path=/run/dbus/system_bus_socket"
	}
	if path, _ := dbusUnixAddress(sysAddr); path != "" && h.isSocket(path) {
		f.bind("--ro-bind-try", path, "/run/dbus/system_bus_socket")
		f.found("dbus-system", path)
	}

	// PulseAudio (also PipeWire's pulse server).
	pulse := strings.TrimPrefix(h.env("PULSE_SERVER"), "unix:")
	if !filepath.IsAbs(pulse) && hostRun != "" {
		pulse = hostRun + "/pulse/native"
	}
	if filepath.IsAbs(pulse) && h.isSocket(pulse) {
		f.bind("--ro-bind-try", pulse, run+"/pulse/native")
		f.env["PULSE_SERVER"] = "unix:" + run + "/pulse/native"
		f.found("pulseaudio", pulse)
	}

	// PipeWire's native socket.
	pw := h.env("PIPEWIRE_REMOTE")
	if pw == "" {
		pw = "pipewire-0"
	}
	if !filepath.IsAbs(pw) && hostRun != "" {
		pw = filepath.Join(hostRun, pw)
	}
	if filepath.IsAbs(pw) && h.isSocket(pw) {
		f.bind("--ro-bind-try", pw, run+"/pipewire-0")
		f.env["PIPEWIRE_REMOTE"] = run + "/pipewire-0"
		f.found("pipewire", pw)
	}

	// The keyring daemon's sockets (gnome-keyring: control, ssh, pkcs11).
	// Its Secret Service API travels over the session bus.
	if hostRun != "" && h.isDir(hostRun+"/keyring") {
		f.bind("--ro-bind-try", hostRun+"/keyring", run+"/keyring")
		if h.env("GNOME_KEYRING_CONTROL") != "" {
			f.env["GNOME_KEYRING_CONTROL"] = run + "/keyring"
		}
		f.found("keyring", hostRun+"/keyring")
	}

	// The GPU: render nodes, and NixOS's driver tree.
	if h.isDir("/dev/dri") {
		f.bind("--dev-bind-try", "/dev/dri", "/dev/dri")
		f.found("gpu", "/dev/dri")
	}
	if h.exists("/run/opengl-driver") {
		f.bind("--ro-bind-try", "/run/opengl-driver", "/run/opengl-driver")
	}
	return f
}

// x11Display parses DISPLAY ("[host]:N[.S]") into the display number and
// whether it names a local Unix socket.
func x11Display(display string) (n string, local bool) {
	i := strings.LastIndexByte(display, ':')
	if i < 0 {
		return "", false
	}
	host, rest := display[:i], display[i+1:]
	n, _, _ = strings.Cut(rest, ".")
	if n == "" || strings.Trim(n, "0123456789") != "" {
		return "", false
	}
	return n, host == "" || host == "unix"
}

// dbusUnixAddress returns the socket path of the first unix:path= address
// in a D-Bus address list (values are %-escaped), or whether the first
// unix address is an abstract one.
func dbusUnixAddress(addrs string) (path string, abstract bool) {
	for _, addr := range strings.Split(addrs, ";") {
		transport, params, ok := strings.Cut(addr, ":")
		if !ok || transport != "unix" {
			continue
		}
		for _, kv := range strings.Split(params, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "path":
				if p, err := url.PathUnescape(v); err == nil && filepath.IsAbs(p) {
					return p, false
				}
			case "abstract":
				return "", true
			}
		}
	}
	return "", false
}

// osHost is the real host.
func osHost(rt *Runtime) hostView {
	return hostView{lookupEnv: rt.lookupEnv, stat: os.Stat, uid: os.Getuid()}
}
