package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// DefaultCALifetime is how long a sandbox's CA is valid. Its key lives
// only in the supervisor's memory and dies with it, so the lifetime is a
// second line: a bundle left from an old run names a CA nobody can sign
// with, and one that outlives its sandbox expires soon anyway. Two weeks
// covers a sandbox kept open across a long weekend of work; a sandbox
// running longer must be restarted (its TLS to bound hosts then fails
// with "certificate expired", never silently).
const DefaultCALifetime = 14 * 24 * time.Hour

// clockSkew is how far before now certificates are valid from: a VM's
// clock may lag the host's a little.
const clockSkew = time.Hour

// CA is a sandbox's certificate authority. Its key is an ECDSA P-256 key
// (accepted by OpenSSL, GnuTLS, NSS and Chromium, Go, Node and Bun; Ed25519
// is not accepted by NSS or Chromium for TLS). The certificate carries
// critical name constraints: the DNS names and addresses of the bound
// hosts, so even a client that trusts it trusts it for nothing else.
type CA struct {
	cert    *x509.Certificate
	der     []byte
	key     *ecdsa.PrivateKey
	names   []string // permitted DNS subtrees
	addrs   []netip.Addr
	expires time.Time

	mu     sync.Mutex
	leaves map[string]*leafEntry
}

type leafEntry struct {
	ready chan struct{}
	cert  *tls.Certificate
	err   error
}

// CAOptions configure NewCA.
type CAOptions struct {
	// Hosts the CA may issue for: names, "*." wildcards, addresses, as
	// secrets.Set.Hosts gives them. "*.example.com" permits example.com
	// and every name below it (the one form of a DNS name constraint
	// that OpenSSL, GnuTLS, NSS, Chromium and Go all read alike); the
	// broker itself issues only for hosts a secret is bound to.
	Hosts []string
	// Lifetime: zero is DefaultCALifetime.
	Lifetime time.Duration
	// Label names the sandbox in the CA's subject (a person reading a
	// certificate error sees which sandbox it came from).
	Label string
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// unusedName is the name constraint of a CA with no bound names: the
// reserved top-level domain .invalid (RFC 6761), under which no real name
// exists, so a constraint is still present and permits nothing real.
const unusedName = "invalid"

// NewCA makes a CA for the hosts. The key is generated here and never
// leaves the returned value.
func NewCA(opts CAOptions) (*CA, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	lifetime := opts.Lifetime
	if lifetime <= 0 {
		lifetime = DefaultCALifetime
	}
	ca := &CA{leaves: map[string]*leafEntry{}}
	for _, h := range opts.Hosts {
		h = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
		if a, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
			ca.addrs = append(ca.addrs, a.Unmap())
			continue
		}
		name := strings.TrimPrefix(h, "*.")
		if name == "" || strings.ContainsAny(name, "*/: ") {
			return nil, fmt.Errorf("broker: %q is not a host a certificate can name", h)
		}
		ca.names = append(ca.names, name)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("broker: making the CA key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	start := now()
	ca.expires = start.Add(lifetime)
	cn := "claude-sandbox CA"
	if opts.Label != "" {
		cn += " " + opts.Label
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"claude-sandbox"}},
		NotBefore:             start.Add(-clockSkew),
		NotAfter:              ca.expires,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true, // leaves only, no intermediate
		// RFC 5280 asks for critical name constraints; every client
		// named above understands them.
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         ca.names,
	}
	if len(ca.names) == 0 {
		tmpl.PermittedDNSDomains = []string{unusedName}
	}
	for _, a := range ca.addrs {
		tmpl.PermittedIPRanges = append(tmpl.PermittedIPRanges, ipNet(a))
	}
	if len(ca.addrs) == 0 {
		// Without an address constraint every address would be permitted.
		tmpl.ExcludedIPRanges = []*net.IPNet{
			{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		}
	}
	// The subject key identifier (Go derives it for a CA) is what strict
	// verifiers (Python 3.13's VERIFY_X509_STRICT) require of a CA.
	ca.der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("broker: making the CA certificate: %w", err)
	}
	ca.cert, err = x509.ParseCertificate(ca.der)
	if err != nil {
		return nil, err
	}
	ca.key = key
	return ca, nil
}

func ipNet(a netip.Addr) *net.IPNet {
	bits := a.BitLen()
	ip := net.IP(a.AsSlice())
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}
}

func serialNumber() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("broker: a serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

// Certificate is the CA's certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// PEM is the CA's certificate in PEM form: what the sandbox trusts.
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der})
}

// SPKIHash is the base64 SHA-256 of the CA's public key (the form of
// Chromium's --ignore-certificate-errors-spki-list and of HPKP pins).
func (ca *CA) SPKIHash() string {
	sum := sha256.Sum256(ca.cert.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// Expires is when the CA and every leaf it issued stop being valid.
func (ca *CA) Expires() time.Time { return ca.expires }

// ErrNotPermitted is returned for a host outside the CA's constraints.
var ErrNotPermitted = errors.New("outside the sandbox CA's name constraints")

// Permits says whether the CA may issue for host (a name or an address).
func (ca *CA) Permits(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		a = a.Unmap()
		for _, p := range ca.addrs {
			if p == a {
				return true
			}
		}
		return false
	}
	for _, n := range ca.names {
		if host == n || strings.HasSuffix(host, "."+n) {
			return true
		}
	}
	return false
}

// Leaf is the server certificate for host, made on first use and kept:
// its only subject alternative name is host. Concurrent callers for one
// host wait for one certificate.
func (ca *CA) Leaf(host string) (*tls.Certificate, error) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	ca.mu.Lock()
	e, ok := ca.leaves[host]
	if !ok {
		e = &leafEntry{ready: make(chan struct{})}
		ca.leaves[host] = e
	}
	ca.mu.Unlock()
	if ok {
		<-e.ready
		return e.cert, e.err
	}
	e.cert, e.err = ca.issue(host)
	close(e.ready)
	if e.err != nil {
		ca.mu.Lock()
		delete(ca.leaves, host) // a later call may try again
		ca.mu.Unlock()
	}
	return e.cert, e.err
}

func (ca *CA) issue(host string) (*tls.Certificate, error) {
	if !ca.Permits(host) {
		return nil, fmt.Errorf("broker: a certificate for %s: %w", host, ErrNotPermitted)
	}
	return ca.sign(host)
}

// sign makes a leaf for host, whatever the constraints say (the tests
// use it to show that clients refuse what the constraints exclude).
func (ca *CA) sign(host string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    time.Now().Add(-clockSkew),
		NotAfter:     ca.expires,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		// No common name: OpenSSL would check "127.0.0.1" as a DNS name
		// against the DNS constraints. Go marks the names critical then.
		tmpl.IPAddresses = []net.IP{a.Unmap().AsSlice()}
	} else {
		tmpl.Subject = pkix.Name{CommonName: host}
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("broker: a certificate for %s: %w", host, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
