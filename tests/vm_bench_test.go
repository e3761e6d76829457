package tests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkVMStart times, side by side in one run, on a warm vm closure:
// cold, `claude-sandbox exec` of a VM that is not running, to the
// command's first output (supervisor, QEMU, the guest's boot, its agent,
// the session); session, `claude-sandbox exec` into the running VM, to
// the first output and to the end (a session's set-up through the
// supervisor and the agent, and its exit status back); host, the same
// command run by the host's sh, the floor of the last. Run it with
//
//	go test ./tests -run '^$' -bench VMStart -benchtime 3x
func BenchmarkVMStart(b *testing.B) {
	requireVMHost(b)
	p := project(b)
	home := b.TempDir()
	o := runOpts{env: []string{"HOME=" + home}}
	buildJSON(b, o, "vm", "--no-network")
	vm := []string{"--backend", "vm", "--accel", "tcg", "--no-network", "exec", p, "--"}
	const marker = "first-output"

	// firstOutput runs cmd and returns how long until marker appears on its
	// stdout, and until it ends.
	firstOutput := func(cmd *exec.Cmd) (first, all time.Duration) {
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		var seen bytes.Buffer
		buf := make([]byte, 4096)
		for first == 0 {
			n, err := out.Read(buf)
			seen.Write(buf[:n])
			if bytes.Contains(seen.Bytes(), []byte(marker)) {
				first = time.Since(start)
			}
			if err != nil {
				b.Fatalf("%s ended before its first output: %v\n%s\n%s", cmd.Path, err, seen.String(), stderr.String())
			}
		}
		for {
			if _, err := out.Read(buf); err != nil {
				break
			}
		}
		if err := cmd.Wait(); err != nil {
			b.Fatalf("%s: %v\n%s", cmd.Path, err, stderr.String())
		}
		return first, time.Since(start)
	}
	cs := func(args ...string) *exec.Cmd {
		c := exec.Command(binary, args...)
		c.Env = baseEnv(o)
		return c
	}

	var cold, sessionFirst, sessionAll, host time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		gone(b, p)
		c, _ := firstOutput(cs(append(vm, "echo", marker)...))
		cold += c
		gone(b, p)

		os.Remove(filepath.Join(p, "ready"))
		keeper := startBackground(b, o, append(vm, "sh", "-c", "touch ready; sleep 600")...)
		waitForVM(b, keeper, filepath.Join(p, "ready"))
		f, a := firstOutput(cs(append(vm, "echo", marker)...))
		sessionFirst += f
		sessionAll += a
		_, h := firstOutput(exec.Command("sh", "-c", "echo "+marker))
		host += h
		run(b, o, "stop", p)
		keeper.wait(b, time.Minute)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(cold.Seconds()/n, "s-cold-start/op")
	b.ReportMetric(sessionFirst.Seconds()*1000/n, "ms-session-first-output/op")
	b.ReportMetric(sessionAll.Seconds()*1000/n, "ms-session/op")
	b.ReportMetric(host.Seconds()*1000/n, "ms-host-sh/op")
}
