package closure

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultPushCompression is what a push compresses NARs with when the URL
// does not say. Nix's own default, xz on one core, took 5 min 16 s for the
// bubblewrap closure where zstd took 6.6 s (BenchmarkPush); every Nix that
// can substitute from a binary cache since 2.4 (libarchive) decompresses
// zstd.
const DefaultPushCompression = "zstd"

// PushTarget is a binary cache URL as `nix copy --to` will get it, and
// what it means for the people who will substitute from it.
type PushTarget struct {
	// URL is what nix copy gets: the user's URL, plus compression= where it
	// chose none and secret-key= for --secret-key.
	URL string `json:"-"`
	// Shown is the user's URL, for messages (it may name a key file, never
	// a key).
	Shown string `json:"to"`
	// BinaryCache: file://, http(s):// or s3:// (Nix's BinaryCacheStore),
	// the stores that compress and sign. Another store (ssh-ng://, a local
	// store) has neither setting and is passed through untouched.
	BinaryCache bool `json:"binaryCache"`
	// Compression is the NAR compression the cache gets, and
	// CompressionFromURL whether the user's URL chose it (compression= or
	// parallel-compression=, which alone means Nix's default, xz).
	Compression        string `json:"compression,omitempty"`
	CompressionFromURL bool   `json:"compressionFromURL,omitempty"`
	// PublicKey is the signing key's public half ("name:base64"), the value
	// consumers add to trusted-public-keys; empty for an unsigned push.
	PublicKey string `json:"publicKey,omitempty"`
}

// Signed says whether every pushed path is signed.
func (t PushTarget) Signed() bool { return t.PublicKey != "" }

// KeyName is the signing key's name, the part before the colon.
func (t PushTarget) KeyName() string {
	name, _, _ := strings.Cut(t.PublicKey, ":")
	return name
}

// PushURLError is a --push URL or key that cannot be used.
type PushURLError struct{ Msg, Fix string }

func (e *PushURLError) Error() string { return e.Msg }
func (e *PushURLError) Hint() string  { return e.Fix }

var binaryCacheSchemes = map[string]bool{"file": true, "http": true, "https": true, "s3": true}

// NewPushTarget reads a --push URL and an optional --secret-key file. The
// URL's own settings win: compression=, parallel-compression= and
// secret-key= are Nix's BinaryCacheStore settings (the same names in Nix
// 2.8 and 2.26) and are left as written.
func NewPushTarget(to, secretKeyFile string) (PushTarget, error) {
	scheme, _, ok := strings.Cut(to, "://")
	if !ok || scheme == "" {
		return PushTarget{}, &PushURLError{fmt.Sprintf("--push %q: not a store URL", to), "e.g. file:///srv/nix-cache or s3://bucket"}
	}
	t := PushTarget{URL: to, Shown: to, BinaryCache: binaryCacheSchemes[scheme]}
	params := storeURLParams(to)
	if !t.BinaryCache {
		if secretKeyFile != "" {
			return PushTarget{}, &PushURLError{fmt.Sprintf("--secret-key signs binary caches; %s:// is a Nix store", scheme),
				"push to file://, s3:// or http(s)://, or sign the paths with nix store sign"}
		}
		return t, nil
	}
	switch {
	case params["compression"] != "":
		t.Compression, t.CompressionFromURL = params["compression"], true
	case params["parallel-compression"] != "":
		t.Compression, t.CompressionFromURL = "xz", true
	default:
		t.Compression = DefaultPushCompression
		t.URL = addParam(t.URL, "compression", DefaultPushCompression)
	}
	keyFile := params["secret-key"]
	switch {
	case secretKeyFile != "" && keyFile != "":
		return PushTarget{}, &PushURLError{"--secret-key and the URL's secret-key= both name a key", "name the key once"}
	case secretKeyFile != "":
		abs, err := filepath.Abs(secretKeyFile)
		if err != nil {
			return PushTarget{}, err
		}
		keyFile = abs
		t.URL = addParam(t.URL, "secret-key", abs)
	}
	if keyFile != "" {
		pub, err := publicKeyOf(keyFile)
		if err != nil {
			return PushTarget{}, err
		}
		t.PublicKey = pub
	}
	return t, nil
}

// UnsignedWarning is what a person is told before an unsigned push to a
// binary cache, or "". The pusher cannot see its consumers' nix.conf, but
// Nix's default there is require-sigs = true (2.8 and 2.26 alike): such a
// consumer ignores every unsigned path and builds instead.
func (t PushTarget) UnsignedWarning() string {
	if !t.BinaryCache || t.Signed() {
		return ""
	}
	return "pushing unsigned paths: a Nix with the default require-sigs = true will not substitute them; " +
		"sign with --secret-key FILE (make one with nix-store --generate-binary-cache-key NAME FILE FILE.pub)"
}

// storeURLParams reads a store URL's query as Nix does (splitUriAndParams,
// decodeQuery: split at '&', the value percent-decoded, the first wins).
func storeURLParams(u string) map[string]string {
	params := map[string]string{}
	_, query, ok := strings.Cut(u, "?")
	if !ok {
		return params
	}
	for _, kv := range strings.Split(query, "&") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if _, seen := params[k]; !seen {
			params[k] = percentDecode(v)
		}
	}
	return params
}

func percentDecode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if c, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(c))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// addParam appends one query parameter, percent-encoding all but the
// unreserved characters and '/', which Nix's decodeQuery reads back.
func addParam(u, name, value string) string {
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	var b strings.Builder
	for i := 0; i < len(value); i++ {
		c := value[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', strings.IndexByte("-._~/", c) >= 0:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return u + sep + name + "=" + b.String()
}

// publicKeyOf reads a Nix secret key file ("name:base64 of an ed25519
// private key", as nix-store --generate-binary-cache-key writes it) and
// returns the matching public key in the same form.
func publicKeyOf(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", &PushURLError{fmt.Sprintf("secret key: %v", err), "make one with nix-store --generate-binary-cache-key NAME FILE FILE.pub"}
	}
	name, encoded, ok := strings.Cut(strings.TrimSpace(string(data)), ":")
	key, decErr := base64.StdEncoding.DecodeString(encoded)
	if !ok || name == "" || decErr != nil || len(key) != ed25519.PrivateKeySize {
		return "", &PushURLError{fmt.Sprintf("secret key %s: not a Nix signing key (NAME:BASE64)", file),
			"make one with nix-store --generate-binary-cache-key NAME FILE FILE.pub; the .pub file is the public half"}
	}
	pub := ed25519.PrivateKey(key).Public().(ed25519.PublicKey)
	return name + ":" + base64.StdEncoding.EncodeToString(pub), nil
}
