package tests

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkSecretProxyThroughput downloads secretBenchSize bytes over TLS
// from a server on the host's loopback, side by side in one run:
//
//	direct    curl on the host, straight to the server (the floor)
//	brokered  curl in a bubblewrap sandbox, through its proxy, to the host
//	          a secret is bound to: TLS terminated by the supervisor (the
//	          placeholder swapped, the response masked), re-encrypted to
//	          the server
//	tunnel    the same to an allowed host no secret is bound to: the proxy
//	          only relays the client's own TLS
//
// Each speed is curl's own (%{speed_download}), so the sandbox's start is
// not in it. Reported: MB/s of each, and x-direct, the median ratio of
// brokered to direct (the target is at least 0.5).
//
//	go test ./tests -run '^$' -bench SecretProxyThroughput -benchtime 5x
const secretBenchSize = 64 << 20

func BenchmarkSecretProxyThroughput(b *testing.B) {
	requireSandboxHost(b)
	buildJSON(b, runOpts{})
	chunk := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range chunk {
		chunk[i] = byte(rng.Uint32())
	}
	big := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(secretBenchSize))
		for n := 0; n < secretBenchSize; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	bound, other := httptest.NewTLSServer(big), httptest.NewTLSServer(big)
	defer bound.Close()
	defer other.Close()
	boundAddr, otherAddr := strings.TrimPrefix(bound.URL, "https://"), strings.TrimPrefix(other.URL, "https://")
	p := project(b)
	conf := fmt.Sprintf("allow = [%q, %q]\n\n[secrets.TEST_TOKEN]\nenv = \"CSB_TEST_TOKEN\"\nhosts = [%q]\n", boundAddr, otherAddr, boundAddr)
	os.WriteFile(filepath.Join(p, "claude-sandbox.toml"), []byte(conf), 0o644)
	roots := hostRoots(b, bound)
	o := runOpts{env: []string{"CSB_TEST_TOKEN=" + realToken, "SSL_CERT_FILE=" + roots}}
	if r := run(b, o, "trust", p); r.code != 0 {
		b.Fatalf("trust: %s", r)
	}
	n := b.N + 1 // the first of each warms the tunnel and the leaf certificate
	curl := func(url string) string {
		return fmt.Sprintf(`curl -sS -o /dev/null -w '%%{speed_download}\n' -H "Authorization: Bearer $TEST_TOKEN" %s/big`, url)
	}
	script := fmt.Sprintf(`for i in $(seq %d); do echo "B $(%s)"; echo "T $(%s)"; done`, n, curl(bound.URL), curl(other.URL))
	b.ResetTimer()
	var direct []float64
	for i := 0; i < n; i++ {
		out, err := exec.Command("curl", "-sS", "--cacert", roots, "-o", "/dev/null", "-w", "%{speed_download}", bound.URL+"/big").Output()
		if err != nil {
			b.Fatalf("direct curl: %v", err)
		}
		v, _ := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
		direct = append(direct, v)
	}
	r := run(b, o, "exec", p, "--", "bash", "-c", script)
	b.StopTimer()
	if r.code != 0 {
		b.Fatalf("in the sandbox: %s", r)
	}
	var brokered, tunnel []float64
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		kind, v, _ := strings.Cut(l, " ")
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			b.Fatalf("curl printed %q: %s", l, r)
		}
		if kind == "B" {
			brokered = append(brokered, f)
		} else {
			tunnel = append(tunnel, f)
		}
	}
	direct, brokered, tunnel = direct[1:], brokered[1:], tunnel[1:]
	var ratios []float64
	for i := range brokered {
		ratios = append(ratios, brokered[i]/direct[i])
	}
	mean := func(xs []float64) float64 {
		s := 0.0
		for _, x := range xs {
			s += x
		}
		return s / float64(len(xs)) / 1e6
	}
	slices.Sort(ratios)
	b.ReportMetric(mean(direct), "direct-MB/s")
	b.ReportMetric(mean(brokered), "brokered-MB/s")
	b.ReportMetric(mean(tunnel), "tunnel-MB/s")
	b.ReportMetric(ratios[len(ratios)/2], "x-direct")
}
