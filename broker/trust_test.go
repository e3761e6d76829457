package broker

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSystemBundle(t *testing.T) {
	ca, _ := NewCA(CAOptions{Hosts: []string{"a.test"}})
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	os.WriteFile(empty, []byte("# nothing\n"), 0o644)
	own := filepath.Join(dir, "own.pem")
	os.WriteFile(own, append([]byte("# a comment\n"), ca.PEM()...), 0o644)
	env := map[string]string{"SSL_CERT_FILE": empty, "NIX_SSL_CERT_FILE": own}
	path, pem, err := SystemBundle(func(k string) string { return env[k] })
	if err != nil || path != own || !bytes.Equal(pem, ca.PEM()) {
		t.Errorf("%s %v: a file without certificates is passed over, comments dropped", path, err)
	}
	// The host's own bundle (this machine's distribution's).
	path, pem, err = SystemBundle(func(string) string { return "" })
	if err != nil || !strings.HasPrefix(path, "/etc/") || len(pem) == 0 {
		t.Errorf("%s %v", path, err)
	}
}

func TestWriteTrust(t *testing.T) {
	ca, _ := NewCA(CAOptions{Hosts: []string{"a.test"}})
	_, system, err := SystemBundle(nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ca.WriteTrust(filepath.Join(t.TempDir(), "trust"), system)
	if err != nil {
		t.Fatal(err)
	}
	bundle, _ := os.ReadFile(f.Bundle)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) || !bytes.HasPrefix(bundle, system) || !bytes.HasSuffix(bundle, ca.PEM()) {
		t.Error("bundle: the host's roots, then the CA")
	}
	if own, _ := os.ReadFile(f.CA); !bytes.Equal(own, ca.PEM()) {
		t.Error("CA file")
	}
	var policy map[string][]string
	data, _ := os.ReadFile(f.ChromiumPolicy)
	if json.Unmarshal(data, &policy) != nil || len(policy["CACertificates"]) != 1 {
		t.Errorf("policy %s", data)
	}
	for _, p := range []string{f.Bundle, f.CA, f.ChromiumPolicy} {
		if st, _ := os.Stat(p); st.Mode().Perm() != 0o644 {
			t.Errorf("%s mode %v", p, st.Mode())
		}
	}
	e := Env("/b", "/c")
	for _, k := range []string{"SSL_CERT_FILE", "NIX_SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"} {
		if e[k] != "/b" {
			t.Errorf("%s = %q", k, e[k])
		}
	}
	if e["NODE_EXTRA_CA_CERTS"] != "/c" {
		t.Error("NODE_EXTRA_CA_CERTS names the CA alone")
	}
}
