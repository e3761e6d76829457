package doctor

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQEMU writes a stand-in for qemu-system-* that behaves like one of
// the three outcomes a boot probe can see.
func fakeQEMU(t *testing.T, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBootProbeOutcomes(t *testing.T) {
	env := &Env{System: "x86_64-linux"}
	ctx := context.Background()

	boots := fakeQEMU(t, `printf 'SeaBIOS\n[    0.000000] Linux version 6.1\n'; exec sleep 30`)
	if took, err := bootProbe(ctx, env, boots, "/kernel", 5*time.Second); err != nil || took > 5*time.Second {
		t.Errorf("a guest printing a kernel line: %v, %v", took, err)
	}

	// Nested KVM on some hosts: QEMU refuses the CPU model at once.
	fails := fakeQEMU(t, `echo 'qemu-system-x86_64: warning: host doesn'"'"'t support requested feature' >&2
echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2; exit 134`)
	_, err := bootProbe(ctx, env, fails, "/kernel", 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "failed to set MSR 0x10a") || strings.Contains(err.Error(), "warning") {
		t.Errorf("QEMU failing: %v", err)
	}

	// On others: the guest spins and prints nothing past the firmware.
	spins := fakeQEMU(t, `printf 'SeaBIOS (version 1.16)\nBooting from ROM...\n'; exec sleep 30`)
	start := time.Now()
	_, err = bootProbe(ctx, env, spins, "/kernel", 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "no kernel output") {
		t.Errorf("a spinning guest: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("the probe outlived its timeout by far: %s", time.Since(start))
	}
}

func TestLineWatcherSplitWrites(t *testing.T) {
	found := 0
	w := &lineWatcher{match: kernelLine, found: func() { found++ }}
	for _, chunk := range []string{"Booting\n[   ", " 0.0000", "01] Linux\n", "[    0.000002] again\n"} {
		w.Write([]byte(chunk))
	}
	if found != 1 {
		t.Errorf("found %d times, want once", found)
	}
}

func TestReportVerdict(t *testing.T) {
	r := &Report{DefaultBackend: "bubblewrap", Backends: map[string]bool{}}
	checks := []Check{
		{ID: "kvm", Title: "KVM", Status: Fail, Fix: "use --accel tcg"},
		{ID: "nspawn", Title: "systemd-nspawn", Status: Fail, NeededBy: []string{"container"}, Fix: "install it"},
		{ID: "display", Title: "display", Status: None},
	}
	for _, b := range backends {
		r.Backends[b] = true
	}
	for _, c := range checks {
		if c.Status == Fail {
			for _, b := range c.NeededBy {
				r.Backends[b] = false
			}
		}
	}
	r.Checks, r.OK = checks, r.Backends[r.DefaultBackend]
	if !r.OK || r.Backends["container"] || !r.Backends["vm"] {
		t.Fatalf("verdicts: %+v", r.Backends)
	}
	var b strings.Builder
	r.WriteText(&b)
	out := b.String()
	for _, want := range []string{"✗ KVM", "fix: use --accel tcg", "– display", "container  cannot run (systemd-nspawn)", "* bubblewrap"} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
}

// TestSocketChecksReportWhatALaunchForwards plants sockets where a desktop
// session has them and names others that are not there.
func TestSocketChecksReportWhatALaunchForwards(t *testing.T) {
	run := shortTempDir(t)
	listen := func(path string) {
		os.MkdirAll(filepath.Dir(path), 0o700)
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
	}
	listen(filepath.Join(run, "wayland-1"))
	listen(filepath.Join(run, "pulse", "native"))
	listen(filepath.Join(run, "bus"))
	listen(filepath.Join(run, "agent.sock"))
	vars := map[string]string{
		"HOME":            t.TempDir(),
		"XDG_RUNTIME_DIR": run,
		"WAYLAND_DISPLAY": "wayland-1",
		"DISPLAY":         ":97",           // no /tmp/.X11-unix/X97
		"PIPEWIRE_REMOTE": "pipewire-gone", // named, absent
		"SSH_AUTH_SOCK":   filepath.Join(run, "agent.sock"),
	}
	env := &Env{Getenv: func(name string) string { return vars[name] }}
	ctx := context.Background()

	expect := func(c Check, status Status, contains ...string) {
		t.Helper()
		if c.Status != status {
			t.Errorf("%s: %s (%s), want %s", c.ID, c.Status, c.Detail, status)
		}
		for _, s := range contains {
			if !strings.Contains(c.Detail, s) {
				t.Errorf("%s: %q lacks %q", c.ID, c.Detail, s)
			}
		}
	}
	expect(checkDisplay(ctx, env), OK, "Wayland "+filepath.Join(run, "wayland-1"), "missing: DISPLAY=:97")
	expect(checkAudio(ctx, env), OK, "PulseAudio "+filepath.Join(run, "pulse", "native"), "missing: PIPEWIRE_REMOTE=pipewire-gone")
	expect(checkDBus(ctx, env), OK, "session bus "+filepath.Join(run, "bus"))
	expect(checkSSHAgent(ctx, env), OK, vars["SSH_AUTH_SOCK"])

	vars["SSH_AUTH_SOCK"] = filepath.Join(run, "gone.sock")
	expect(checkSSHAgent(ctx, env), Warn, "SSH_AUTH_SOCK="+vars["SSH_AUTH_SOCK"])

	env.NoDesktop = true
	expect(checkDisplay(ctx, env), None, "desktop forwarding is off")
}

// shortTempDir is a temporary directory whose path leaves room for a Unix
// socket's name (108 bytes in all): a build's TMPDIR can be too long.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "csd-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
