package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// tiocstiProbe tries to push input into its controlling terminal three
// ways: TIOCSTI, TIOCSTI with the upper half of the 64-bit request set (the
// kernel ignores it, a careless filter does not), and TIOCLINUX.
const tiocstiProbe = `
import ctypes, errno, fcntl, os, termios
res = []
try:
    fcntl.ioctl(0, termios.TIOCSTI, b"x"); res.append("TIOCSTI=INJECTED")
except OSError as e:
    res.append("TIOCSTI=" + errno.errorcode[e.errno])
libc = ctypes.CDLL(None, use_errno=True)
r = libc.syscall(16, 0, ctypes.c_ulong((1 << 32) | termios.TIOCSTI), ctypes.c_char_p(b"y"))
res.append("TIOCSTI_HIGH=" + ("INJECTED" if r == 0 else errno.errorcode[ctypes.get_errno()]))
try:
    fcntl.ioctl(0, 0x541C, b"\x0b"); res.append("TIOCLINUX=OK")
except OSError as e:
    res.append("TIOCLINUX=" + errno.errorcode[e.errno])
print("RESULT", " ".join(res), "first-sandbox" if os.path.exists(os.path.expanduser("~/first-sandbox")) else "")
`

func resultLine(out string) string {
	// Injected bytes echo before the line: "xyRESULT …".
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, "RESULT "); i >= 0 {
			return l[i:]
		}
	}
	return ""
}

// No terminal injection from inside, neither from the sandbox's first
// program nor from a process that joined it later. The same probe run on
// the host proves the terminal really accepts TIOCSTI here.
func TestBwrapBlocksTerminalInjection(t *testing.T) {
	requireSandboxHost(t)
	buildJSON(t, runOpts{})
	p := project(t)
	os.WriteFile(filepath.Join(p, "probe.py"), []byte(tiocstiProbe), 0o644)
	env := baseEnv(runOpts{})

	if py, err := exec.LookPath("python3"); err == nil {
		host := openPTY(t)
		host.run(t, env, py, filepath.Join(p, "probe.py"))
		legacy, _ := os.ReadFile("/proc/sys/dev/tty/legacy_tiocsti")
		if got := resultLine(host.text()); strings.TrimSpace(string(legacy)) != "0" && !strings.Contains(got, "TIOCSTI=INJECTED") {
			t.Fatalf("control: TIOCSTI does not work on this host's terminal even outside a sandbox, the probe proves nothing: %q", host.text())
		}
	}

	want := "TIOCSTI=EPERM TIOCSTI_HIGH=EPERM TIOCLINUX=EPERM"
	first := openPTY(t)
	if code := first.run(t, env, binary, "exec", p, "--", "python3", "probe.py"); code != 0 {
		t.Fatalf("probe in the sandbox: exit %d\n%s", code, first.text())
	}
	if got := resultLine(first.text()); !strings.Contains(got, want) {
		t.Errorf("in the sandbox: %q, want %q", got, want)
	}

	bg := startBackground(t, runOpts{}, "exec", p, "--", "bash", "-c", `touch ~/first-sandbox "$0/started"; exec sleep 120`, p)
	waitFor(t, bg, filepath.Join(p, "started"))
	joined := openPTY(t)
	if code := joined.run(t, env, binary, "exec", p, "--", "python3", "probe.py"); code != 0 {
		t.Fatalf("probe joining the sandbox: exit %d\n%s", code, joined.text())
	}
	got := resultLine(joined.text())
	if !strings.Contains(got, "first-sandbox") {
		t.Fatalf("the second launch did not join the running sandbox: %q", joined.text())
	}
	if !strings.Contains(got, want) {
		t.Errorf("joined: %q, want %q", got, want)
	}
}
