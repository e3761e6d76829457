package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// startXvfb starts a virtual X server on a free display and returns its
// DISPLAY value; it stops with the test.
func startXvfb(t *testing.T) string {
	t.Helper()
	testenv.RequireProgram(t, "Xvfb")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	// -displayfd: Xvfb picks a free display and writes its number once it
	// accepts connections.
	x := exec.CommandContext(ctx, "Xvfb", "-displayfd", "3", "-nolisten", "tcp", "-screen", "0", "1024x768x24")
	x.ExtraFiles = []*os.File{w}
	if err := x.Start(); err != nil {
		cancel()
		t.Fatalf("Xvfb: %v", err)
	}
	w.Close()
	t.Cleanup(func() { cancel(); x.Wait() })
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		got <- strings.TrimSpace(line)
	}()
	select {
	case n := <-got:
		if n == "" {
			t.Fatal("Xvfb did not report a display")
		}
		return ":" + n
	case <-time.After(30 * time.Second):
		t.Fatal("Xvfb did not start within 30s")
	}
	return ""
}

// qemuWindows lists the top-level windows on a display whose name says QEMU.
func qemuWindows(display string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "xwininfo", "-display", display, "-root", "-tree").Output()
	var wins []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "QEMU") {
			wins = append(wins, strings.TrimSpace(line))
		}
	}
	return wins
}

// dryRunDisplay is what QEMU's command line in --dry-run says of the display.
func dryRunDisplay(t *testing.T, o runOpts, args ...string) (display string, gpu bool, env []string) {
	t.Helper()
	r := run(t, o, append([]string{"--backend", "vm", "--accel", "tcg", "--dry-run"}, args...)...)
	var inv struct {
		Args []string `json:"args"`
		Env  []string `json:"env"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &inv) != nil {
		t.Fatalf("--dry-run: %s", r)
	}
	i := slices.Index(inv.Args, "-display")
	if i < 0 || i+1 >= len(inv.Args) {
		t.Fatalf("no -display on QEMU's command line: %v", inv.Args)
	}
	return inv.Args[i+1], slices.Contains(inv.Args, "virtio-vga"), inv.Env
}

// TestVMDisplayWindow: with an X display, the VM opens a QEMU window (and
// gives the guest a GPU) while the command's output still comes back on
// the terminal; without a display, or with --no-display, QEMU runs with
// -display none. One boot.
func TestVMDisplayWindow(t *testing.T) {
	requireVMHost(t)
	testenv.RequireProgram(t, "xwininfo")
	display := startXvfb(t)
	home := vmHome(t)
	p := vmProject(t)

	if d, gpu, _ := dryRunDisplay(t, vmOpts(home), "exec", p, "--", "true"); d != "none" || gpu {
		t.Errorf("without DISPLAY: -display %s, GPU %v; want none and no GPU", d, gpu)
	}
	if d, gpu, _ := dryRunDisplay(t, vmOpts(home, "DISPLAY="+display), "--no-display", "exec", p, "--", "true"); d != "none" || gpu {
		t.Errorf("--no-display: -display %s, GPU %v; want none and no GPU", d, gpu)
	}
	d, gpu, env := dryRunDisplay(t, vmOpts(home, "DISPLAY="+display, "ANTHROPIC_API_KEY=sk-display-probe"), "exec", p, "--", "true")
	if d == "none" || !gpu || !slices.Contains(env, "DISPLAY="+display) {
		t.Fatalf("with DISPLAY=%s: -display %s, GPU %v, env %v; want a window (install qemu-system-gui)", display, d, gpu, env)
	}
	if strings.Contains(strings.Join(env, " "), "sk-display-probe") {
		t.Errorf("the API key is in QEMU's environment: %v", env)
	}

	bg := startBackground(t, vmOpts(home, "DISPLAY="+display),
		"--backend", "vm", "--accel", "tcg", "exec", p, "--", "sh", "-c", "test -e /dev/dri/card0 && echo card0-present; sleep 2; echo display-run-done")
	defer bg.kill()
	var seen []string
	deadline := time.Now().Add(90 * time.Second)
	for len(seen) == 0 && !bg.exited() && time.Now().Before(deadline) {
		seen = qemuWindows(display)
		time.Sleep(200 * time.Millisecond)
	}
	if status := bg.wait(t, 3*time.Minute); status != 0 || !strings.Contains(bg.out.String(), "display-run-done") {
		t.Fatalf("the VM with a window: status %d\n%s", status, bg.out.String())
	}
	if len(seen) == 0 {
		t.Errorf("no QEMU window appeared on %s while the VM ran", display)
	}
	// The kiosk's condition needs the GPU's device node when the command
	// starts: virtio_gpu is loaded in stage 1, not whenever udev gets to it.
	if !strings.Contains(bg.out.String(), "card0-present") {
		t.Errorf("no /dev/dri/card0 in the guest when its command started:\n%s", bg.out.String())
	}
	// The launch returns with its command's status; the VM powers down
	// after its last session, in the background.
	gone(t, p)
	if left := qemuWindows(display); len(left) > 0 {
		t.Errorf("QEMU windows left after the VM ended: %v", left)
	}
}
