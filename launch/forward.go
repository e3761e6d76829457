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

// Host is how a launch looks at the host: its environment, its files, and
// the uid the sandbox runs as (whose runtime directory it gets). Tests
// replace it with a fake one.
type Host struct {
	LookupEnv func(string) (string, bool)
	Stat      func(string) (fs.FileInfo, error)
	UID       int
}

// OSHost is the real host, for a sandbox run as this process's user.
func OSHost(rt *Runtime) Host {
	return Host{LookupEnv: rt.lookupEnv, Stat: os.Stat, UID: os.Getuid()}
}

// Env returns a host variable ("" when unset).
func (h Host) Env(name string) string {
	v, _ := h.LookupEnv(name)
	return v
}

// IsSocket says whether p is a Unix socket.
func (h Host) IsSocket(p string) bool {
	st, err := h.Stat(p)
	return err == nil && st.Mode()&fs.ModeSocket != 0
}

// IsDir says whether p is a directory.
func (h Host) IsDir(p string) bool {
	st, err := h.Stat(p)
	return err == nil && st.IsDir()
}

// Exists says whether p exists.
func (h Host) Exists(p string) bool {
	_, err := h.Stat(p)
	return err == nil
}

// RuntimeDir is the host's XDG_RUNTIME_DIR, or systemd's default for it.
func (h Host) RuntimeDir() string {
	if d := h.Env("XDG_RUNTIME_DIR"); filepath.IsAbs(d) {
		return d
	}
	if d := "/run/user/" + strconv.Itoa(h.UID); h.IsDir(d) {
		return d
	}
	return ""
}

// Forwards is what forwarding adds to a sandbox: mounts, variables to set,
// and the resources forwarded (what doctor reports).
type Forwards struct {
	Mounts []Mount
	Env    map[string]string
	Found  []Forward
}

// Forward is one host resource a launch forwards into the sandbox.
type Forward struct {
	What   string // ssh-agent, nix-daemon, x11, wayland, dbus-session, dbus-system, pulseaudio, pipewire, keyring, gpu
	Source string // its host path; its address when it is reached over the network
}

// HostForwards is what a launch with rt's switches forwards from this host
// (as this process's user). doctor reports it, so that what it says is what
// a launch does.
func HostForwards(rt *Runtime) []Forward { return OSHost(rt).Forwards(rt).Found }

func (f *Forwards) found(what, source string) {
	f.Found = append(f.Found, Forward{What: what, Source: source})
}

// bind forwards a host path that may vanish before the sandbox starts
// (a socket): optional, so its absence then does not stop the start.
func (f *Forwards) bind(kind MountKind, src, dst string) {
	f.Mounts = append(f.Mounts, Mount{Kind: kind, Source: src, Dest: dst, Optional: true})
}

// RuntimeDirInside is XDG_RUNTIME_DIR inside: the path systemd would give
// the same uid, so programs that assume it find it. Backends make it a Dir
// of the user's own before the forwarded sockets placed in it.
func RuntimeDirInside(uid int) string { return "/run/user/" + strconv.Itoa(uid) }

// Forwards decides every forwarded resource: Unix sockets and devices,
// never what lives in the host's network namespace (no sandbox shares it).
func (h Host) Forwards(rt *Runtime) Forwards {
	f := Forwards{Env: map[string]string{}}
	run := RuntimeDirInside(h.UID)
	hostRun := h.RuntimeDir()
	f.Env["XDG_RUNTIME_DIR"] = run

	// The SSH agent, so git over SSH can use the user's keys without the
	// sandbox holding them: never the host's socket itself, but the
	// supervisor's filtering agent in front of it (SSHAgentMounts).
	if sock := h.Env("SSH_AUTH_SOCK"); filepath.IsAbs(sock) && h.IsSocket(sock) {
		f.found("ssh-agent", sock)
	}

	if rt.NoDesktop {
		return f
	}

	// X11: the display's socket, and the cookie that authorises it.
	if display := h.Env("DISPLAY"); display != "" {
		if n, local := X11Display(display); local {
			sock := "/tmp/.X11-unix/X" + n
			if h.IsSocket(sock) {
				// A tmpfs of its own: /tmp is the project's persistent one,
				// and the socket's mount point should not be left in it.
				f.Mounts = append(f.Mounts, Mount{Kind: Tmpfs, Dest: "/tmp/.X11-unix"})
				f.bind(ROBind, sock, sock)
				f.Env["DISPLAY"] = display
				f.found("x11", sock)
			}
		}
		// host:N is TCP (ssh -X), and an abstract bus below lives in the
		// host's network namespace: no sandbox shares it (its only way out
		// is its proxy), so neither is forwarded.
		if _, ok := f.Env["DISPLAY"]; ok {
			xauth := h.Env("XAUTHORITY")
			if !filepath.IsAbs(xauth) {
				xauth = filepath.Join(rt.Home, ".Xauthority")
			}
			if h.Exists(xauth) {
				f.bind(ROBind, xauth, run+"/Xauthority")
				f.Env["XAUTHORITY"] = run + "/Xauthority"
			}
		}
	}

	// Wayland.
	if wl := h.Env("WAYLAND_DISPLAY"); wl != "" {
		sock := wl
		if !filepath.IsAbs(sock) && hostRun != "" {
			sock = filepath.Join(hostRun, wl)
		}
		if filepath.IsAbs(sock) && h.IsSocket(sock) {
			name := filepath.Base(sock)
			f.bind(ROBind, sock, run+"/"+name)
			f.Env["WAYLAND_DISPLAY"] = name
			f.found("wayland", sock)
		}
	}
	if _, ok := f.Env["DISPLAY"]; ok || f.Env["WAYLAND_DISPLAY"] != "" {
		for _, name := range []string{"XDG_SESSION_TYPE", "XDG_CURRENT_DESKTOP"} {
			if v := h.Env(name); v != "" {
				f.Env[name] = v
			}
		}
	}

	// The D-Bus session bus.
	addr := h.Env("DBUS_SESSION_BUS_ADDRESS")
	if addr == "" && hostRun != "" {
		addr = "unix:path=" + hostRun + "/bus"
	}
	if path, _ := dbusUnixAddress(addr); path != "" && h.IsSocket(path) {
		f.bind(ROBind, path, run+"/bus")
		f.Env["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=" + run + "/bus"
		f.found("dbus-session", path)
	}

	// The D-Bus system bus, at its standard path.
	sysAddr := h.Env("DBUS_SYSTEM_BUS_ADDRESS")
	if sysAddr == "" {
		sysAddr = "unix:path=/run/dbus/system_bus_socket"
	}
	if path, _ := dbusUnixAddress(sysAddr); path != "" && h.IsSocket(path) {
		f.bind(ROBind, path, "/run/dbus/system_bus_socket")
		f.found("dbus-system", path)
	}

	// PulseAudio (also PipeWire's pulse server).
	pulse := strings.TrimPrefix(h.Env("PULSE_SERVER"), "unix:")
	if !filepath.IsAbs(pulse) && hostRun != "" {
		pulse = hostRun + "/pulse/native"
	}
	if filepath.IsAbs(pulse) && h.IsSocket(pulse) {
		f.bind(ROBind, pulse, run+"/pulse/native")
		f.Env["PULSE_SERVER"] = "unix:" + run + "/pulse/native"
		f.found("pulseaudio", pulse)
	}

	// PipeWire's native socket.
	pw := h.Env("PIPEWIRE_REMOTE")
	if pw == "" {
		pw = "pipewire-0"
	}
	if !filepath.IsAbs(pw) && hostRun != "" {
		pw = filepath.Join(hostRun, pw)
	}
	if filepath.IsAbs(pw) && h.IsSocket(pw) {
		f.bind(ROBind, pw, run+"/pipewire-0")
		f.Env["PIPEWIRE_REMOTE"] = run + "/pipewire-0"
		f.found("pipewire", pw)
	}

	// The keyring daemon's sockets (gnome-keyring: control, pkcs11), not
	// its ssh socket: an SSH agent of its own, which would bypass the
	// filtering agent. Its Secret Service API travels over the session bus.
	if hostRun != "" && h.IsDir(hostRun+"/keyring") {
		f.Mounts = append(f.Mounts, Mount{Kind: Dir, Dest: run + "/keyring", Mode: 0o700})
		for _, sock := range []string{"control", "pkcs11"} {
			f.bind(ROBind, hostRun+"/keyring/"+sock, run+"/keyring/"+sock)
		}
		if h.Env("GNOME_KEYRING_CONTROL") != "" {
			f.Env["GNOME_KEYRING_CONTROL"] = run + "/keyring"
		}
		f.found("keyring", hostRun+"/keyring")
	}

	// The GPU: render nodes, and NixOS's driver tree.
	if h.IsDir("/dev/dri") {
		f.bind(DevBind, "/dev/dri", "/dev/dri")
		f.found("gpu", "/dev/dri")
	}
	if h.Exists("/run/opengl-driver") {
		f.bind(ROBind, "/run/opengl-driver", "/run/opengl-driver")
	}
	return f
}

// X11Display parses DISPLAY ("[host]:N[.S]") into the display number and
// whether it names a local Unix socket.
func X11Display(display string) (n string, local bool) {
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
