package tests

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkEgress measures the network as a program inside a sandbox sees
// it, side by side with the host in one run: curl inside a bubblewrap
// sandbox, whose only way out is its supervisor's proxy, and the same curl
// on the host, directly, against one server on the host's loopback (named
// by address in an allow rule). Each iteration is one sandbox running the
// requests and the host running the same ones, so pairs see the same
// machine load; curl's own timers exclude the launch.
//
//   - bulk: 256 MiB over plain HTTP (the proxy forwards the request) and
//     through a CONNECT tunnel (what every https:// request takes), in
//     MB/s, and each as a fraction of the direct download;
//
//   - set-up: a one-byte answer's time to first byte from a new
//     connection, inside and direct, and what the proxy adds: plain HTTP
//     (setup-*) and through a new CONNECT tunnel (connect-setup-*); each
//     iteration's figure is the median of setupRounds requests.
//
//     go test ./tests -run '^$' -bench Egress -benchtime 10x
//
// CLAUDE_SANDBOX_BENCH_BASELINE names another claude-sandbox (an earlier
// commit's, built with `go build -o DIR/ ./cmd/...`, its supervisor beside
// it): each iteration then runs the sandbox's probes with it too,
// alternating which goes first, and its figures are reported beside this
// one's as base-*.
func BenchmarkEgress(b *testing.B) {
	requireSandboxHost(b)
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Skip("curl is not installed on the host (apt-get install curl)")
	}
	const bulk = 256 << 20
	chunk := make([]byte, 1<<20)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/bulk" {
			w.Write([]byte("k"))
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(bulk))
		for sent := 0; sent < bulk; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	addr := ln.Addr().String()
	p := project(b)

	// speed_download is bytes per second; time_starttransfer seconds.
	const setupRounds = 7
	probes := `c() { curl -s -o /dev/null -w '%{speed_download} %{time_starttransfer}\n' "$@" || echo "0 0"; }
c http://` + addr + `/bulk
c -p http://` + addr + `/bulk
for i in $(seq ` + strconv.Itoa(setupRounds) + `); do c http://` + addr + `/one; c -p http://` + addr + `/one; done`
	hostProbes := strings.ReplaceAll(probes, "curl -s", curl+" -s --noproxy '*'")
	// The first of each warms the page cache and the supervisor's binary.
	run(b, runOpts{}, "exec", p, "--allow", addr, "--", "sh", "-c", probes)

	baseline := os.Getenv("CLAUDE_SANDBOX_BENCH_BASELINE")
	baseOpts := runOpts{bin: baseline}
	if baseline != "" {
		run(b, baseOpts, "exec", p, "--allow", addr, "--", "sh", "-c", probes)
	}

	type sample struct {
		viaHTTP, viaTunnel, direct                               float64
		setupIn, setupDirect, connectSetupIn, connectSetupDirect float64
	}
	var samples, baseSamples []sample
	// parse reads the probes' lines: the two downloads, then the set-up
	// rounds, plain and CONNECT in turn.
	parse := func(out string) [][2]float64 {
		var rows [][2]float64
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) != 2 {
				continue
			}
			speed, _ := strconv.ParseFloat(f[0], 64)
			first, _ := strconv.ParseFloat(f[1], 64)
			rows = append(rows, [2]float64{speed, first})
		}
		if len(rows) != 2+2*setupRounds || rows[0][0] == 0 || rows[1][0] == 0 {
			return nil
		}
		return rows
	}
	// setup is the median time to first byte of every other set-up round
	// from the first'th.
	setup := func(rows [][2]float64, first int) float64 {
		var v []float64
		for i := 2 + first; i < len(rows); i += 2 {
			v = append(v, rows[i][1])
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	inside := func(o runOpts) [][2]float64 {
		r := run(b, o, "exec", p, "--allow", addr, "--", "sh", "-c", probes)
		rows := parse(r.stdout)
		if r.code != 0 || rows == nil {
			b.Fatalf("the probes did not all run inside: %q (%s)", r.stdout, r)
		}
		return rows
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var in, base [][2]float64
		switch {
		case baseline == "":
			in = inside(runOpts{})
		case i%2 == 0:
			in, base = inside(runOpts{}), inside(baseOpts)
		default:
			base, in = inside(baseOpts), inside(runOpts{})
		}
		out, err := exec.Command("sh", "-c", hostProbes).Output()
		if err != nil {
			b.Fatalf("curl on the host: %v", err)
		}
		host := parse(string(out))
		if host == nil {
			b.Fatalf("the probes did not all run on the host: %q", out)
		}
		mk := func(in [][2]float64) sample {
			return sample{viaHTTP: in[0][0], viaTunnel: in[1][0], direct: host[0][0],
				setupIn: setup(in, 0), setupDirect: setup(host, 0),
				connectSetupIn: setup(in, 1), connectSetupDirect: setup(host, 1)}
		}
		samples = append(samples, mk(in))
		if base != nil {
			baseSamples = append(baseSamples, mk(base))
		}
	}
	b.StopTimer()
	med := func(samples []sample, f func(sample) float64) float64 {
		v := make([]float64, len(samples))
		for i, s := range samples {
			v[i] = f(s)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	const mb = 1e6
	report := func(prefix string, samples []sample) {
		b.ReportMetric(med(samples, func(s sample) float64 { return s.viaHTTP })/mb, prefix+"proxy-http-MB/s")
		b.ReportMetric(med(samples, func(s sample) float64 { return s.viaTunnel })/mb, prefix+"proxy-connect-MB/s")
		b.ReportMetric(med(samples, func(s sample) float64 { return s.viaHTTP / s.direct }), prefix+"http-x-direct")
		b.ReportMetric(med(samples, func(s sample) float64 { return s.viaTunnel / s.direct }), prefix+"connect-x-direct")
		b.ReportMetric(med(samples, func(s sample) float64 { return s.setupIn * 1000 }), prefix+"setup-inside-ms")
		b.ReportMetric(med(samples, func(s sample) float64 { return (s.setupIn - s.setupDirect) * 1000 }), prefix+"setup-added-ms")
		b.ReportMetric(med(samples, func(s sample) float64 { return s.connectSetupIn * 1000 }), prefix+"connect-setup-inside-ms")
		b.ReportMetric(med(samples, func(s sample) float64 { return (s.connectSetupIn - s.connectSetupDirect) * 1000 }), prefix+"connect-setup-added-ms")
	}
	b.ReportMetric(med(samples, func(s sample) float64 { return s.direct })/mb, "direct-MB/s")
	b.ReportMetric(med(samples, func(s sample) float64 { return s.setupDirect * 1000 }), "setup-direct-ms")
	report("", samples)
	if baseSamples != nil {
		report("base-", baseSamples)
	}
	b.ReportMetric(0, "ns/op")
}
