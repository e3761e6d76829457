package doctor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// The host sockets a launch forwards when they exist. launch decides
// (HostForwards, the very code a launch runs); these checks only say which
// variable named what was not found. None of them is needed: a headless
// host gets a sandbox without a display.

// hostForwards is what a launch with the default switches would forward,
// grouped by resource. Desktop forwarding is asked for even when it is off,
// so the report can say what is there but withheld.
func hostForwards(env *Env) map[string][]launch.Forward {
	rt := &launch.Runtime{
		Network:   true,
		NixDaemon: true,
		Home:      env.Getenv("HOME"),
		LookupEnv: func(name string) (string, bool) { v := env.Getenv(name); return v, v != "" },
	}
	byWhat := map[string][]launch.Forward{}
	for _, f := range launch.HostForwards(rt) {
		byWhat[f.What] = append(byWhat[f.What], f)
	}
	return byWhat
}

// forwarded is one kind of resource a check reports: launch's name for it,
// its label in the report, and the variable that names it on the host.
type forwarded struct{ what, label, namedBy string }

// forwardCheck reports the resources of kinds that are forwarded, and as
// missing each variable that is set although nothing it names was found.
func forwardCheck(env *Env, c Check, kinds []forwarded, none string) Check {
	fwd := hostForwards(env)
	var found, dangling []string
	for _, k := range kinds {
		for _, f := range fwd[k.what] {
			found = append(found, k.label+" "+f.Source)
		}
		if v := env.Getenv(k.namedBy); v != "" && len(fwd[k.what]) == 0 {
			dangling = append(dangling, k.namedBy+"="+v)
		}
	}
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
	return forwardCheck(env, Check{ID: "display", Title: "display"},
		[]forwarded{{"x11", "X11", "DISPLAY"}, {"wayland", "Wayland", "WAYLAND_DISPLAY"}},
		"none (DISPLAY and WAYLAND_DISPLAY unset): Chromium inside has no window; Claude Code works")
}

func checkAudio(_ context.Context, env *Env) Check {
	return forwardCheck(env, Check{ID: "audio", Title: "audio"},
		[]forwarded{{"pulseaudio", "PulseAudio", "PULSE_SERVER"}, {"pipewire", "PipeWire", "PIPEWIRE_REMOTE"}},
		"none (no PulseAudio or PipeWire socket): no sound inside")
}

func checkDBus(_ context.Context, env *Env) Check {
	return forwardCheck(env, Check{ID: "dbus", Title: "D-Bus"},
		[]forwarded{{"dbus-session", "session bus", "DBUS_SESSION_BUS_ADDRESS"}, {"dbus-system", "system bus", "DBUS_SYSTEM_BUS_ADDRESS"}},
		"none: no session or system bus")
}

func checkSSHAgent(_ context.Context, env *Env) Check {
	return forwardCheck(env, Check{ID: "ssh-agent", Title: "SSH agent"},
		[]forwarded{{"ssh-agent", "agent", "SSH_AUTH_SOCK"}},
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
