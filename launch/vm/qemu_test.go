package vm

import (
	"slices"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/launch/internal/launchtest"
)

// TestVMDisplayChoice: a window (with a virtio GPU) exactly when the host
// has a display whose socket exists, the user did not say --no-display or
// --no-desktop, and QEMU can open one; otherwise -display none, with one
// warning only when a window was wanted and QEMU cannot open it.
func TestVMDisplayChoice(t *testing.T) {
	saved := qemuDisplayUIs
	t.Cleanup(func() { qemuDisplayUIs = saved })
	x11 := map[string]string{"DISPLAY": ":7", "XAUTHORITY": "/home/u/.Xauthority", "ANTHROPIC_API_KEY": "sk-secret-123"}
	wayland := map[string]string{"WAYLAND_DISPLAY": "wayland-1", "XDG_RUNTIME_DIR": "/run/user/1000"}
	cases := []struct {
		name      string
		vars      map[string]string
		sockets   []string
		uis       []string
		noDisplay bool
		noDesktop bool
		wantUI    string
		wantEnv   []string
		warn      bool
	}{
		{name: "x11", vars: x11, sockets: []string{"/tmp/.X11-unix/X7"}, uis: []string{"none", "gtk", "sdl"},
			wantUI: "gtk", wantEnv: []string{"DISPLAY=:7", "XAUTHORITY=/home/u/.Xauthority"}},
		{name: "wayland, sdl only", vars: wayland, sockets: []string{"/run/user/1000/wayland-1"}, uis: []string{"none", "sdl"},
			wantUI: "sdl", wantEnv: []string{"WAYLAND_DISPLAY=wayland-1", "XDG_RUNTIME_DIR=/run/user/1000"}},
		{name: "no display", vars: map[string]string{}, uis: []string{"gtk"}},
		{name: "stale DISPLAY", vars: x11, uis: []string{"gtk"}},
		{name: "TCP display", vars: map[string]string{"DISPLAY": "localhost:10.0"}, uis: []string{"gtk"}},
		{name: "--no-display", vars: x11, sockets: []string{"/tmp/.X11-unix/X7"}, uis: []string{"gtk"}, noDisplay: true},
		{name: "--no-desktop", vars: x11, sockets: []string{"/tmp/.X11-unix/X7"}, uis: []string{"gtk"}, noDesktop: true},
		{name: "QEMU without gtk or sdl", vars: x11, sockets: []string{"/tmp/.X11-unix/X7"}, uis: []string{"none", "curses"}, warn: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			probed := false
			qemuDisplayUIs = func(string) map[string]bool {
				probed = true
				uis := map[string]bool{}
				for _, ui := range c.uis {
					uis[ui] = true
				}
				return uis
			}
			m, rt := vmManifest(true), vmRuntime(t, true)
			rt.NoDisplay, rt.NoDesktop = c.noDisplay, c.noDesktop
			d, warning := chooseDisplay(launchtest.Host(c.vars, c.sockets, nil, nil), rt, m.VM.QEMU)
			if d.UI != c.wantUI || !slices.Equal(d.Env, c.wantEnv) {
				t.Errorf("display = %+v, want %q %v", d, c.wantUI, c.wantEnv)
			}
			if (warning != "") != c.warn || strings.Contains(warning, "\n") {
				t.Errorf("warning = %q, want one line: %v", warning, c.warn)
			}
			if probed && len(c.sockets) == 0 || probed && (c.noDisplay || c.noDesktop) {
				t.Error("QEMU was asked for its display backends with no window to open")
			}
			p, err := planVMRun(m, rt, "0123456789ab")
			if err != nil {
				t.Fatal(err)
			}
			p.Display = d
			args := qemuArgs(m, p)
			joined := strings.Join(args, " ")
			if c.wantUI == "" {
				if index(args, "-display", "none") < 0 || strings.Contains(joined, "virtio-vga") {
					t.Errorf("no window wanted, yet: %s", joined)
				}
			} else if index(args, "-display", c.wantUI) < 0 || index(args, "-device", "virtio-vga") < 0 {
				t.Errorf("no %s window with a virtio GPU: %s", c.wantUI, joined)
			}
			// The console (the boot log) stays with the supervisor whatever the display.
			if index(args, "-serial", "chardev:console") < 0 || !strings.Contains(joined, "stdio,id=console") {
				t.Errorf("the serial console went elsewhere: %s", joined)
			}
			if strings.Contains(joined+strings.Join(d.Env, " "), "sk-secret-123") {
				t.Errorf("a secret reached QEMU: %s %v", joined, d.Env)
			}
		})
	}
}
