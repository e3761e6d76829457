package broker

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
)

// systemBundles are where Linux distributions keep the bundle their own
// tools trust, in the order Go's crypto/x509 looks for them; NixOS has
// the first (a link to its ca-bundle.crt) and the second.
var systemBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Gentoo, Arch, NixOS
	"/etc/ssl/certs/ca-bundle.crt",                      // NixOS
	"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL 6
	"/etc/ssl/ca-bundle.pem",                            // openSUSE
	"/etc/pki/tls/cacert.pem",                           // OpenELEC
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
	"/etc/ssl/cert.pem",                                 // Alpine
}

// SystemBundle finds the CA bundle the host's own tools trust: the file
// SSL_CERT_FILE or NIX_SSL_CERT_FILE names in the host's environment
// (getenv; nil is os.Getenv), else the distribution's bundle. It returns
// the path and the certificates in it (PEM); a file without a single
// certificate is passed over.
func SystemBundle(getenv func(string) string) (string, []byte, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	candidates := []string{getenv("SSL_CERT_FILE"), getenv("NIX_SSL_CERT_FILE")}
	candidates = append(candidates, systemBundles...)
	var tried []string
	for _, p := range candidates {
		if p == "" {
			continue
		}
		tried = append(tried, p)
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if certs := pemCertificates(data); len(certs) > 0 {
			return p, certs, nil
		}
	}
	return "", nil, fmt.Errorf("no CA bundle on this host (looked at %v); install your distribution's ca-certificates, or set SSL_CERT_FILE", tried)
}

// pemCertificates keeps the CERTIFICATE blocks of data (a bundle may
// carry comments and "TRUSTED CERTIFICATE" blocks some clients refuse).
func pemCertificates(data []byte) []byte {
	var out bytes.Buffer
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out.Bytes()
		}
		if b.Type == "CERTIFICATE" && len(b.Headers) == 0 {
			_ = pem.Encode(&out, b)
		}
	}
}

// TrustFiles are the files that make a sandbox's clients trust its CA,
// by their paths on the host (the launcher binds them in).
type TrustFiles struct {
	// Bundle: the host's bundle and the CA, for the variables that name
	// the whole set of roots a client trusts.
	Bundle string
	// CA: the CA alone, for variables that add to built-in roots.
	CA string
	// ChromiumPolicy: a managed policy file (CACertificates) for
	// /etc/chromium/policies/managed/.
	ChromiumPolicy string
}

// File names inside the directory WriteTrust writes.
const (
	BundleFile         = "ca-bundle.crt"
	CAFile             = "claude-sandbox-ca.crt"
	ChromiumPolicyFile = "claude-sandbox-ca.json"
)

// WriteTrust writes the trust files into dir (created 0755; each file
// 0644, atomically): the bundle (system, the host's bundle as PEM, then
// the CA), the CA alone, and Chromium's policy.
func (ca *CA) WriteTrust(dir string, system []byte) (TrustFiles, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return TrustFiles{}, err
	}
	f := TrustFiles{
		Bundle:         filepath.Join(dir, BundleFile),
		CA:             filepath.Join(dir, CAFile),
		ChromiumPolicy: filepath.Join(dir, ChromiumPolicyFile),
	}
	bundle := append(bytes.TrimRight(append([]byte(nil), system...), "\n"), '\n')
	if len(system) == 0 {
		bundle = nil
	}
	bundle = append(bundle, ca.PEM()...)
	policy, err := ca.ChromiumPolicy()
	if err != nil {
		return TrustFiles{}, err
	}
	for path, data := range map[string][]byte{f.Bundle: bundle, f.CA: ca.PEM(), f.ChromiumPolicy: policy} {
		if err := atomicfile.Write(path, data, 0o644); err != nil {
			return TrustFiles{}, fmt.Errorf("broker: writing %s: %w", path, err)
		}
	}
	return f, nil
}

// ChromiumPolicy is a managed policy that makes Chromium trust the CA
// for server authentication (CACertificates: base64 DER, Chromium 131 and
// later). Chromium reads every *.json in its managed policy directory,
// so this file sits beside the sandbox's own policy.
func (ca *CA) ChromiumPolicy() ([]byte, error) {
	return json.MarshalIndent(map[string][]string{
		"CACertificates": {base64.StdEncoding.EncodeToString(ca.der)},
	}, "", "  ")
}

// Env is what the sandbox's environment gets, by the paths the files
// have inside the sandbox (bundle, ca). The bundle replaces a client's
// roots, so it holds the host's too; NODE_EXTRA_CA_CERTS adds to Node's
// (and Bun's, so Claude Code's) built-in roots, so it names the CA alone.
func Env(bundle, ca string) map[string]string {
	return map[string]string{
		"SSL_CERT_FILE":       bundle, // OpenSSL (curl, Python's ssl, git on NixOS), Go, Rust's native-tls and rustls-native-certs
		"NIX_SSL_CERT_FILE":   bundle, // nixpkgs' patched OpenSSL, curl and Nix itself
		"REQUESTS_CA_BUNDLE":  bundle, // Python requests (and pip)
		"CURL_CA_BUNDLE":      bundle, // curl and libcurl users
		"GIT_SSL_CAINFO":      bundle, // git over HTTPS, whatever its TLS library (GnuTLS on Debian)
		"NODE_EXTRA_CA_CERTS": ca,     // Node.js, Bun (Claude Code), Deno
	}
}
