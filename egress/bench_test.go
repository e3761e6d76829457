package egress

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// The proxy's cost, side by side with a direct connection, on loopback:
//
//	go test ./egress -run '^$' -bench . -benchtime 2s
//
// Throughput: 16 MiB asked for and read, in turn through the proxy and
// directly; MB/s through the proxy beside direct-MB/s, and x-direct the
// median ratio (ThroughputHTTP: the same for a plain-HTTP download the
// proxy forwards, over loopback TCP). Setup: connect, ask,
// and get one byte back (median-µs is the number to compare; the proxy
// adds the Unix socket, the request, the policy check and its own TCP
// connection).

// bulk is what the destination sends for each byte asked.
const bulk = 16 << 20

// benchServer sends bulk zeros for each byte a connection sends ("s"),
// or echoes one byte ("e"), by the first byte it reads.
func benchServer(b *testing.B) (addr string) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var first [1]byte
				if _, err := io.ReadFull(c, first[:]); err != nil {
					return
				}
				if first[0] == 'e' {
					c.Write(first[:])
					io.Copy(io.Discard, c)
					return
				}
				// One bulk of zeros per byte asked: nothing waits in socket
				// buffers between reads, for either connection of a pair.
				buf := make([]byte, bulk)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
					if _, err := io.ReadFull(c, first[:]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func benchProxy(b *testing.B, port string) (sock, tcp string) {
	b.Helper()
	p := NewPolicy(Allowlist, mustRules(b, "origin.test:"+port, "127.0.0.1:"+port), nil)
	s, err := New(Options{Policy: p, Resolver: newResolver(map[string][]string{"origin.test": {"127.0.0.1"}})})
	if err != nil {
		b.Fatal(err)
	}
	sock = filepath.Join(b.TempDir(), "s")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(ul)
	go s.Serve(tl)
	b.Cleanup(func() { s.Close() })
	return sock, tl.Addr().String()
}

// dialers returns, by name, ways to reach the destination (host:port
// named origin.test in the proxy's rules).
func dialers(b *testing.B, dest string) []struct {
	name string
	dial func() (net.Conn, error)
} {
	_, port, _ := net.SplitHostPort(dest)
	sock, tcp := benchProxy(b, port)
	connect := func(network, addr string) (net.Conn, error) {
		c, err := net.Dial(network, addr)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(c, "CONNECT origin.test:%s HTTP/1.1\r\nHost: origin.test:%s\r\n\r\n", port, port)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
		if err != nil || resp.StatusCode != 200 || br.Buffered() != 0 {
			c.Close()
			return nil, fmt.Errorf("CONNECT: %v %v", resp, err)
		}
		return c, nil
	}
	socks := func() (net.Conn, error) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return nil, err
		}
		pn, _ := strconv.Atoi(port)
		req := append([]byte{5, 1, 0, 5, 1, 0, 3, byte(len("origin.test"))}, "origin.test"...)
		req = binary.BigEndian.AppendUint16(req, uint16(pn))
		c.Write(req)
		var reply [12]byte
		if _, err := io.ReadFull(c, reply[:]); err != nil || reply[3] != 0 {
			c.Close()
			return nil, fmt.Errorf("SOCKS5: %v %x", err, reply)
		}
		return c, nil
	}
	return []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"direct", func() (net.Conn, error) { return net.Dial("tcp", dest) }},
		{"connect-unix", func() (net.Conn, error) { return connect("unix", sock) }},
		{"connect-tcp", func() (net.Conn, error) { return connect("tcp", tcp) }},
		{"socks5-unix", socks},
	}
}

// BenchmarkThroughput asks for 16 MiB through the proxy, then from a
// direct connection, in turn, and reports each one's MB/s and the median
// of the per-pair ratios: the machine's load (other work on two cores)
// changes over a run, and pairs close in time see the same load.
func BenchmarkThroughput(b *testing.B) {
	dest := benchServer(b)
	ds := dialers(b, dest)
	direct, err := ds[0].dial()
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	buf := make([]byte, bulk)
	fetch := func(c net.Conn) time.Duration {
		start := time.Now()
		if _, err := c.Write([]byte{'s'}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	for _, d := range ds[1:] {
		b.Run(d.name, func(b *testing.B) {
			c, err := d.dial()
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			againstDirect(b, func() time.Duration { return fetch(c) }, func() time.Duration { return fetch(direct) })
		})
	}
}

func BenchmarkSetup(b *testing.B) {
	dest := benchServer(b)
	for _, d := range dialers(b, dest) {
		b.Run(d.name, func(b *testing.B) {
			times := make([]time.Duration, 0, b.N)
			var one [1]byte
			for i := 0; i < b.N; i++ {
				start := time.Now()
				c, err := d.dial()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write([]byte{'e'}); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, one[:]); err != nil {
					b.Fatal(err)
				}
				times = append(times, time.Since(start))
				c.Close()
			}
			slices.Sort(times)
			b.ReportMetric(float64(times[len(times)/2].Nanoseconds())/1e3, "median-µs")
		})
	}
}

// BenchmarkThroughputHTTP downloads 16 MiB by plain HTTP on a kept-alive
// connection through the proxy's TCP listener, then on one straight to
// the server, in turn (see BenchmarkThroughput).
func BenchmarkThroughputHTTP(b *testing.B) {
	body := make([]byte, bulk)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	dest := ln.Addr().String()
	_, port, _ := net.SplitHostPort(dest)
	_, proxyAddr := benchProxy(b, port)

	type client struct {
		c   net.Conn
		br  *bufio.Reader
		req string
	}
	open := func(addr, target string) *client {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return &client{c: c, br: bufio.NewReaderSize(c, 64<<10),
			req: "GET " + target + " HTTP/1.1\r\nHost: origin.test:" + port + "\r\n\r\n"}
	}
	via := open(proxyAddr, "http://origin.test:"+port+"/bulk")
	direct := open(dest, "/bulk")
	buf := make([]byte, bulk)
	fetch := func(cl *client) time.Duration {
		start := time.Now()
		if _, err := io.WriteString(cl.c, cl.req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(cl.br, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(resp.Body, buf); err != nil || resp.StatusCode != 200 {
			b.Fatalf("%s: %v", resp.Status, err)
		}
		resp.Body.Close()
		return time.Since(start)
	}
	fetch(via)
	fetch(direct)
	againstDirect(b, func() time.Duration { return fetch(via) }, func() time.Duration { return fetch(direct) })
}

// againstDirect times bulk fetches through the proxy (timed) and direct
// (beside it, untimed), in turn, and reports the direct MB/s and the
// median of the per-pair ratios.
func againstDirect(b *testing.B, proxied, direct func() time.Duration) {
	var straight time.Duration
	ratios := make([]float64, 0, b.N)
	b.SetBytes(bulk)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := proxied()
		b.StopTimer()
		s := direct()
		b.StartTimer()
		straight += s
		ratios = append(ratios, s.Seconds()/p.Seconds())
	}
	slices.Sort(ratios)
	b.ReportMetric(float64(b.N)*bulk/1e6/straight.Seconds(), "direct-MB/s")
	b.ReportMetric(ratios[len(ratios)/2], "x-direct")
}
