package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// constrainedServer serves, by SNI, a leaf the CA permits (ok.test) and
// one it signed outside its constraints (evil.test): only the CA's key
// could sign that one, so it stands for a misuse the constraints must
// stop. Each client must accept the first and refuse the second.
func constrainedServer(t *testing.T) (ca *CA, addr string, caFile string) {
	t.Helper()
	ca, err := NewCA(CAOptions{Hosts: []string{"ok.test", "127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	ok, err := ca.Leaf("ok.test")
	if err != nil {
		t.Fatal(err)
	}
	evil, err := ca.sign("evil.test")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if h.ServerName == "evil.test" {
				return evil, nil
			}
			return ok, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from "+r.Host) }),
		ErrorLog: discardLog()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return ca, ln.Addr().String(), caFile
}

func TestNameConstraintsHold(t *testing.T) {
	ca, addr, caFile := constrainedServer(t)
	_, port, _ := net.SplitHostPort(addr)
	run := func(name string, env []string, args ...string) (string, error) {
		bin := testenv.RequireProgram(t, name)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	pyScript := `import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2]))), server_hostname=sys.argv[1])
s.sendall(b"GET / HTTP/1.0\r\nHost: " + sys.argv[1].encode() + b"\r\n\r\n")
print(s.recv(4096).decode())`
	nodeScript := `const tls = require('tls');
const s = tls.connect({host: '127.0.0.1', port: +process.argv[2], servername: process.argv[1]}, () => {
  s.write('GET / HTTP/1.0\r\nHost: ' + process.argv[1] + '\r\n\r\n'); });
s.on('data', d => process.stdout.write(d));
s.on('error', e => { console.error(e.code || e.message); process.exit(3); });`
	clients := []struct {
		name string
		try  func(host string) (string, error)
	}{
		{"Go crypto/x509", func(host string) (string, error) {
			pool := x509.NewCertPool()
			pool.AddCert(ca.Certificate())
			c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: host, RootCAs: pool})
			if err != nil {
				return err.Error(), err
			}
			c.Close()
			return "hello", nil
		}},
		{"curl (OpenSSL)", func(host string) (string, error) {
			return run("curl", []string{"CURL_CA_BUNDLE=" + caFile}, "-sS", "--noproxy", "*", "--resolve", host+":"+port+":127.0.0.1", "https://"+host+":"+port+"/")
		}},
		{"Python ssl", func(host string) (string, error) {
			return run("python3", nil, "-c", pyScript, host, port, caFile)
		}},
		{"Node tls", func(host string) (string, error) {
			return run("node", []string{"NODE_EXTRA_CA_CERTS=" + caFile}, "-e", nodeScript, host, port)
		}},
		{"git (Debian's: libcurl with GnuTLS)", func(host string) (string, error) {
			out, err := run("git", []string{"GIT_SSL_CAINFO=" + caFile, "GIT_TERMINAL_PROMPT=0"}, "-c", "http.curloptResolve="+host+":"+port+":127.0.0.1",
				"ls-remote", "https://"+host+":"+port+"/repo.git")
			// The server is no git server: git reaching it at all (an
			// empty or odd listing) is the handshake succeeding.
			if !strings.Contains(out, "certificate") && !strings.Contains(out, "SSL") && !strings.Contains(out, "TLS") {
				return "hello", nil
			}
			return out, fmt.Errorf("git: %v", err)
		}},
		{"openssl s_client", func(host string) (string, error) {
			out, err := run("openssl", nil, "s_client", "-connect", addr, "-servername", host, "-verify_hostname", host,
				"-CAfile", caFile, "-verify_return_error", "-brief")
			if err == nil && strings.Contains(out, "Verification: OK") {
				return "hello", nil
			}
			return out, fmt.Errorf("refused")
		}},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			out, err := c.try("ok.test")
			if err != nil || !strings.Contains(out, "hello") {
				t.Fatalf("a permitted name was refused (so the test proves nothing): %v\n%s", err, out)
			}
			out, err = c.try("evil.test")
			if err == nil || strings.Contains(out, "hello") {
				t.Fatalf("a name outside the constraints was accepted:\n%s", out)
			}
			t.Logf("refused: %s", lastLine(out))
		})
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// The CA and its leaves pass OpenSSL's strict checks (what Python 3.13
// turns on by default with VERIFY_X509_STRICT).
func TestCertificatesPassStrictVerification(t *testing.T) {
	bin := testenv.RequireProgram(t, "openssl")
	ca, err := NewCA(CAOptions{Hosts: []string{"api.example.com", "127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ca.pem"), ca.PEM(), 0o644)
	for _, host := range []string{"api.example.com", "127.0.0.1"} {
		leaf, err := ca.Leaf(host)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "leaf.pem"), pemOf(leaf.Leaf), 0o644)
		args := []string{"verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", filepath.Join(dir, "ca.pem")}
		if strings.Contains(host, ".com") {
			args = append(args, "-verify_hostname", host)
		} else {
			args = append(args, "-verify_ip", host)
		}
		out, err := exec.Command(bin, append(args, filepath.Join(dir, "leaf.pem"))...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "OK") {
			t.Errorf("%s: %v %s", host, err, out)
		}
	}
}

// A CA for addresses only still constrains names (to the reserved
// .invalid), and one for names only refuses every address.
func TestConstraintsWithoutNamesOrAddresses(t *testing.T) {
	for _, tc := range []struct {
		hosts []string
		bad   string
	}{
		{[]string{"127.0.0.1"}, "example.com"},
		{[]string{"example.com"}, "127.0.0.1"},
		{nil, "example.com"},
	} {
		ca, err := NewCA(CAOptions{Hosts: tc.hosts})
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := ca.sign(tc.bad)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(ca.Certificate())
		if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: tc.bad}); err == nil {
			t.Errorf("CA for %v: a leaf for %s verified", tc.hosts, tc.bad)
		}
	}
}

func TestCALifetime(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ca, err := NewCA(CAOptions{Hosts: []string{"a.test"}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Certificate()
	if !c.NotAfter.Equal(now.Add(DefaultCALifetime)) || c.NotBefore.After(now) || !c.IsCA || !c.MaxPathLenZero {
		t.Errorf("%v %v %v", c.NotBefore, c.NotAfter, c.IsCA)
	}
	if c.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("key %v", c.PublicKeyAlgorithm)
	}
	leaf, _ := ca.Leaf("a.test")
	if !leaf.Leaf.NotAfter.Equal(c.NotAfter) || len(leaf.Leaf.DNSNames) != 1 || leaf.Leaf.DNSNames[0] != "a.test" || len(leaf.Leaf.IPAddresses) != 0 {
		t.Errorf("leaf %v %v %v", leaf.Leaf.NotAfter, leaf.Leaf.DNSNames, leaf.Leaf.IPAddresses)
	}
}
