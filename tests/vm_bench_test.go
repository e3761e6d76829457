package tests

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkVMStart times, side by side in one run, the time to the guest
// command's first output: `claude-sandbox exec` of a warm vm closure
// (evaluation-free start, metadata, QEMU, QMP, console relay) versus a bare
// QEMU started with the very same command line (kernel, initrd, kernel
// parameters, devices, shares) and a metadata share written by hand. The
// guest does the same work in both; the difference is claude-sandbox's.
//
//	go test ./tests -run '^$' -bench VMStart -benchtime 3x
func BenchmarkVMStart(b *testing.B) {
	requireVMHost(b)
	p := project(b)
	home := b.TempDir()
	o := runOpts{env: []string{"HOME=" + home}}
	buildJSON(b, o, "vm", "--no-network")
	flags := []string{"--backend", "vm", "--accel", "tcg", "--no-network"}
	const marker = "first-output"

	dry := run(b, o, append(flags, "--dry-run", "exec", p, "--", "echo", marker)...)
	var inv struct {
		Path string   `json:"path"`
		Args []string `json:"args"`
		Env  []string `json:"env"`
	}
	if dry.code != 0 || json.Unmarshal([]byte(dry.stdout), &inv) != nil {
		b.Fatalf("--dry-run: %s", dry)
	}
	// The run directory the plan names, prepared as the supervisor would.
	metaRe := regexp.MustCompile(`path=([^,]*/vm/[0-9a-f]+)/meta,`)
	m := metaRe.FindStringSubmatch(strings.Join(inv.Args, " "))
	if m == nil {
		b.Fatalf("no metadata share in %v", inv.Args)
	}
	runDir := m[1]
	b.Cleanup(func() { os.RemoveAll(runDir) })
	for _, d := range []string{"meta", "empty", "../../guest"} {
		os.MkdirAll(filepath.Join(runDir, d), 0o700)
	}
	nul := func(items ...string) []byte { return []byte(strings.Join(items, "\x00") + "\x00") }
	files := map[string][]byte{
		"run": nul("nonce=0123456789ab", "user=user", "uid="+strconv.Itoa(os.Getuid()), "gid="+strconv.Itoa(os.Getgid()),
			"home="+home, "project="+p, "shell=/bin/sh", "tty=false", "outTty=false", "rows=0", "cols=0", "fs=9p", "vfsTag="),
		"argv": nul("echo", marker),
		"env":  nul("PATH=/run/current-system/sw/bin:/bin", "HOME="+home, "TERM=dumb"),
	}
	for name, data := range files {
		os.WriteFile(filepath.Join(runDir, "meta", name), data, 0o600)
	}

	// firstOutput runs cmd and returns how long until marker appears on its
	// stdout, then waits for it to end.
	firstOutput := func(cmd *exec.Cmd) time.Duration {
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
		var took time.Duration
		buf := make([]byte, 4096)
		for took == 0 {
			n, err := out.Read(buf)
			seen.Write(buf[:n])
			if bytes.Contains(seen.Bytes(), []byte(marker)) {
				took = time.Since(start)
			}
			if err != nil {
				b.Fatalf("%s ended before its first output: %v\n%s\n%s", cmd.Path, err, seen.String(), stderr.String())
			}
		}
		io.Copy(io.Discard, out)
		cmd.Wait()
		return took
	}

	var sandbox, bare time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cs := exec.Command(binary, append(flags, "exec", p, "--", "echo", marker)...)
		cs.Env = baseEnv(o)
		sandbox += firstOutput(cs)

		q := exec.Command(inv.Path, inv.Args[1:]...)
		q.Dir = runDir
		q.Env = inv.Env
		bare += firstOutput(q)
		os.Remove(filepath.Join(runDir, "qmp.sock"))
		os.Remove(filepath.Join(runDir, "console.sock"))
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(sandbox.Seconds()/n, "s-claude-sandbox/op")
	b.ReportMetric(bare.Seconds()/n, "s-bare-qemu/op")
	b.ReportMetric(sandbox.Seconds()/bare.Seconds(), "ratio")
}
