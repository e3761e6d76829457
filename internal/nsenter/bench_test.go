package nsenter

import (
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkJoin times a session's join (Start into user, mount and
// network namespaces of their own, as unprivileged bwrap makes them,
// with the proxy's socket made on the way, then the command's exit)
// against os/exec of the same command in this process's namespaces,
// interleaved in one run:
//
//	go test ./internal/nsenter -run '^$' -bench Join -benchtime 200x
func BenchmarkJoin(b *testing.B) {
	holder := userNetNamespaces(b)
	var join, plain time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		p, err := Start(Options{Target: holder.Process.Pid, Argv: []string{"true"}, Env: []string{"PATH=/usr/bin:/bin"},
			Path: "/usr/bin:/bin", ListenPort: 20000 + i%20000})
		if err != nil {
			b.Fatal(err)
		}
		var ws unix.WaitStatus
		_, _ = unix.Wait4(p.Pid, &ws, 0, nil)
		join += time.Since(start)
		p.Listener.Close()

		start = time.Now()
		if err := exec.Command("true").Run(); err != nil {
			b.Fatal(err)
		}
		plain += time.Since(start)
	}
	b.ReportMetric(float64(join.Microseconds())/1000/float64(b.N), "join-ms")
	b.ReportMetric(float64(plain.Microseconds())/1000/float64(b.N), "os-exec-ms")
	b.ReportMetric(0, "ns/op")
}
