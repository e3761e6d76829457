package doctor

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// The host sockets a launch forwards when they exist (launch's
// bwrap_desktop.go decides; these checks look where it looks, to tell the
// user what a sandbox will get). None of them is needed: a headless host
// gets a sandbox without a display.

func isSocket(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode()&fs.ModeSocket != 0
}

func runtimeDir(env *Env) string {
	if d := env.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(d) {
		return d
	}
	if d := "/run/user/" + strconv.Itoa(os.Getuid()); isDir(d) {
		return d
	}
	return ""
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// sockets reports found (forwarded) and dangling (named but absent) sockets.
func socketCheck(env *Env, c Check, found, dangling []string, none string) Check {
	switch {
	case env.NoDesktop && c.ID != "ssh-agent":
		c.Status, c.Detail = None, "not forwarded: desktop forwarding is off (--no-desktop / desktop = false)"
	case len(found) > 0:
		c.Status, c.Detail = OK, "forwarded: "+strings.Join(found, ", ")
		if len(dangling) > 0 {
			c.Detail += "; missing: " + strings.Join(dangling, ", ")
		}
	case len(dangling) > 0:
		c.Status, c.Detail = Warn, "named but not there, so not forwarded: "+strings.Join(dangling, ", ")
		c.Fix = "start the service, or unset the variable that names it"
	default:
		c.Status, c.Detail = None, none
	}
	return c
}

func checkDisplay(_ context.Context, env *Env) Check {
	var found, dangling []string
	if d := env.Getenv("DISPLAY"); d != "" {
		host, rest := "", d
		if i := strings.LastIndexByte(d, ':'); i >= 0 {
			host, rest = d[:i], d[i+1:]
		}
		n, _, _ := strings.Cut(rest, ".")
		sock := "/tmp/.X11-unix/X" + n
		switch {
		case host != "" && host != "unix":
			found = append(found, "X11 "+d+" (over the network; not with --no-network)")
		case isSocket(sock):
			found = append(found, "X11 "+d+" ("+sock+")")
		default:
			dangling = append(dangling, "X11 DISPLAY="+d+" ("+sock+")")
		}
	}
	if wl := env.Getenv("WAYLAND_DISPLAY"); wl != "" {
		sock := wl
		if !filepath.IsAbs(sock) {
			sock = filepath.Join(runtimeDir(env), wl)
		}
		if isSocket(sock) {
			found = append(found, "Wayland "+sock)
		} else {
			dangling = append(dangling, "Wayland WAYLAND_DISPLAY="+wl)
		}
	}
	return socketCheck(env, Check{ID: "display", Title: "display"}, found, dangling,
		"none (DISPLAY and WAYLAND_DISPLAY unset): Chromium inside has no window; Claude Code works")
}

func checkAudio(_ context.Context, env *Env) Check {
	var found, dangling []string
	run := runtimeDir(env)
	pulse := strings.TrimPrefix(env.Getenv("PULSE_SERVER"), "unix:")
	if !filepath.IsAbs(pulse) && run != "" {
		pulse = run + "/pulse/native"
	}
	if isSocket(pulse) {
		found = append(found, "PulseAudio "+pulse)
	} else if env.Getenv("PULSE_SERVER") != "" {
		dangling = append(dangling, "PULSE_SERVER="+env.Getenv("PULSE_SERVER"))
	}
	pw := env.Getenv("PIPEWIRE_REMOTE")
	if pw == "" {
		pw = "pipewire-0"
	}
	if !filepath.IsAbs(pw) && run != "" {
		pw = filepath.Join(run, pw)
	}
	if isSocket(pw) {
		found = append(found, "PipeWire "+pw)
	} else if env.Getenv("PIPEWIRE_REMOTE") != "" {
		dangling = append(dangling, "PIPEWIRE_REMOTE="+env.Getenv("PIPEWIRE_REMOTE"))
	}
	return socketCheck(env, Check{ID: "audio", Title: "audio"}, found, dangling, "none (no PulseAudio or PipeWire socket): no sound inside")
}

func checkDBus(_ context.Context, env *Env) Check {
	var found, dangling []string
	addr := env.Getenv("DBUS_SESSION_BUS_ADDRESS")
	if addr == "" && runtimeDir(env) != "" {
		addr = "unix:path=" + runtimeDir(env) + "/bus"
	}
	if path, ok := strings.CutPrefix(addr, "unix:path="); ok {
		path, _, _ = strings.Cut(path, ",")
		if isSocket(path) {
			found = append(found, "session bus "+path)
		} else if env.Getenv("DBUS_SESSION_BUS_ADDRESS") != "" {
			dangling = append(dangling, "DBUS_SESSION_BUS_ADDRESS="+addr)
		}
	} else if strings.Contains(addr, "abstract=") {
		found = append(found, "session bus (abstract; only with the network on)")
	}
	if isSocket("/run/dbus/system_bus_socket") {
		found = append(found, "system bus /run/dbus/system_bus_socket")
	}
	return socketCheck(env, Check{ID: "dbus", Title: "D-Bus"}, found, dangling, "none: no session or system bus")
}

func checkSSHAgent(_ context.Context, env *Env) Check {
	var found, dangling []string
	if sock := env.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if filepath.IsAbs(sock) && isSocket(sock) {
			found = append(found, sock)
		} else {
			dangling = append(dangling, "SSH_AUTH_SOCK="+sock)
		}
	}
	return socketCheck(env, Check{ID: "ssh-agent", Title: "SSH agent"}, found, dangling,
		"none (SSH_AUTH_SOCK unset): git over SSH inside cannot use your keys; HTTPS works")
}

func checkCache(_ context.Context, env *Env) Check {
	c := Check{ID: "cache", Title: "cache directory", NeededBy: backends}
	if err := os.MkdirAll(env.Dirs.Cache, 0o755); err != nil {
		c.Status, c.Detail = Fail, fmt.Sprintf("%s cannot be created: %v", env.Dirs.Cache, err)
		c.Fix = "make it writable, or point XDG_CACHE_HOME at a writable directory"
		return c
	}
	probe, err := os.CreateTemp(env.Dirs.Cache, ".doctor-")
	if err != nil {
		c.Status, c.Detail = Fail, fmt.Sprintf("%s is not writable: %v", env.Dirs.Cache, err)
		c.Fix = "fix its owner and mode, or point XDG_CACHE_HOME at a writable directory"
		return c
	}
	probe.Close()
	os.Remove(probe.Name())
	entries, _ := closure.Entries(env.Dirs)
	c.Status, c.Detail = OK, fmt.Sprintf("%s, writable; %d cached sandbox(es)", env.Dirs.Cache, len(entries))
	return c
}

// autoRoots is where the daemon records indirect roots.
const autoRoots = "/nix/var/nix/gcroots/auto"

func checkGCRoots(_ context.Context, env *Env) Check {
	c := Check{ID: "gcroots", Title: "GC roots"}
	dir := filepath.Join(env.Dirs.State, "gcroots")
	links, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		c.Status, c.Detail = Fail, fmt.Sprintf("%s cannot be read: %v", dir, err)
		c.Fix = "fix its owner and mode: without roots, nix-collect-garbage deletes cached sandboxes"
		return c
	}
	// Which of our roots Nix knows about: an indirect root is a symlink in
	// gcroots/auto pointing at our link.
	registered := map[string]bool{}
	autoReadable := true
	if autos, err := os.ReadDir(autoRoots); err == nil {
		for _, a := range autos {
			if target, err := os.Readlink(filepath.Join(autoRoots, a.Name())); err == nil {
				registered[target] = true
			}
		}
	} else {
		autoReadable = false
	}
	var total, dangling, unregistered int
	for _, l := range links {
		if strings.HasPrefix(l.Name(), ".") {
			continue
		}
		total++
		p := filepath.Join(dir, l.Name())
		target, err := os.Readlink(p)
		if err != nil || !strings.HasPrefix(target, manifest.StoreDir+"/") {
			dangling++
			continue
		}
		if _, err := os.Stat(target); err != nil {
			dangling++
			continue
		}
		if autoReadable && !registered[p] {
			unregistered++
		}
	}
	c.Detail = fmt.Sprintf("%d in %s", total, dir)
	switch {
	case unregistered > 0:
		c.Status = Warn
		c.Detail += fmt.Sprintf("; %d not registered with Nix (nix-collect-garbage may delete those sandboxes)", unregistered)
		c.Fix = "rebuild them (claude-sandbox build --rebuild …) or drop them (claude-sandbox gc)"
	case dangling > 0:
		c.Status = Warn
		c.Detail += fmt.Sprintf("; %d point at nothing", dangling)
		c.Fix = "claude-sandbox gc removes entries whose closure is gone"
	default:
		c.Status = OK
		if total > 0 && autoReadable {
			c.Detail += ", all registered with Nix"
		}
	}
	return c
}

// Below these, a first build (a few hundred MiB to a few GiB with real
// nixpkgs; more for the vm backend) may run out of space.
const (
	lowDiskWarn = 5 << 30
	lowDiskFail = 512 << 20
)

func checkDisk(_ context.Context, env *Env) Check {
	c := Check{ID: "disk", Title: "free disk"}
	var parts []string
	worst := uint64(1 << 62)
	seen := map[uint64]bool{}
	for _, p := range []string{manifest.StoreDir, env.Dirs.Cache} {
		var st unix.Statfs_t
		q := p
		for q != "/" {
			if _, err := os.Stat(q); err == nil {
				break
			}
			q = filepath.Dir(q)
		}
		if unix.Statfs(q, &st) != nil {
			continue
		}
		var fsid uint64 = uint64(uint32(st.Fsid.Val[0]))<<32 | uint64(uint32(st.Fsid.Val[1]))
		if seen[fsid] && fsid != 0 {
			continue
		}
		seen[fsid] = true
		free := st.Bavail * uint64(st.Bsize)
		worst = min(worst, free)
		parts = append(parts, fmt.Sprintf("%s: %s free", p, human(free)))
	}
	if len(parts) == 0 {
		c.Status, c.Detail = Warn, "could not be measured"
		return c
	}
	c.Detail = strings.Join(parts, "; ")
	switch {
	case worst < lowDiskFail:
		c.Status, c.NeededBy = Fail, backends
		c.Fix = "free space: nix-collect-garbage -d, claude-sandbox gc"
	case worst < lowDiskWarn:
		c.Status = Warn
		c.Fix = "a first build with real nixpkgs may need a few GiB: nix-collect-garbage, claude-sandbox gc"
	default:
		c.Status = OK
	}
	return c
}

func human(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}
