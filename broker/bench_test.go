package broker

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/secrets"
)

// The broker's cost on a large download, side by side with direct TLS
// to the same server, on loopback:
//
//	go test ./broker -run '^$' -bench Download -benchtime 20x -count 3
//
// Each iteration downloads benchSize bytes through the broker (the
// client's TLS ends at the proxy, which masks the stream and re-encrypts
// it to the real host) and then directly, on kept-alive connections; the
// pair runs close in time so both see the same machine load. Reported:
// MB/s through the broker, direct-MB/s, and x-direct, the median ratio
// of the pairs.
const benchSize = 64 << 20

func BenchmarkDownload(b *testing.B) {
	// Random bytes, as in an archive or an image: the mask's search
	// meets the first byte of a value as often as chance has it.
	chunk := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range chunk {
		chunk[i] = byte(rng.Uint32())
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(benchSize))
		for n := 0; n < benchSize; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	srv.EnableHTTP2 = false
	srv.Config.ErrorLog = discardLog()
	srv.StartTLS()
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	o := &origin{Server: srv, addr: addr}
	f := newFixture(b, fixtureOptions{
		allow:    []string{addr},
		bindings: []secrets.Binding{envBinding(b, "GH_TOKEN", false, addr)},
		values:   map[string]string{"GH_TOKEN": realToken},
		origins:  []*origin{o},
	})
	viaBroker := f.goClient(b)
	viaBroker.Timeout = 0
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	direct := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	ph := f.placeholder(b, "GH_TOKEN")
	get := func(c *http.Client) time.Duration {
		req, _ := http.NewRequest("GET", "https://"+addr+"/big", nil)
		req.Header.Set("Authorization", "Bearer "+ph)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != benchSize {
			b.Fatalf("read %d: %v", n, err)
		}
		return time.Since(start)
	}
	get(viaBroker) // the tunnel, the leaf and both handshakes, outside the timing
	get(direct)
	var ratios []float64
	var viaTotal, directTotal time.Duration
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v := get(viaBroker)
		b.StopTimer()
		d := get(direct)
		b.StartTimer()
		viaTotal += v
		directTotal += d
		ratios = append(ratios, d.Seconds()/v.Seconds())
	}
	b.StopTimer()
	slices.Sort(ratios)
	mb := func(d time.Duration) float64 { return float64(benchSize) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mb(directTotal), "direct-MB/s")
	b.ReportMetric(ratios[len(ratios)/2], "x-direct")
}
