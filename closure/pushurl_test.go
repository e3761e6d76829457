package closure

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeKey writes a Nix secret key file as nix-store
// --generate-binary-cache-key does and returns its path and public half.
func writeKey(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name+" key&x.sec") // a space and an '&': the URL must still carry it
	if err := os.WriteFile(file, []byte(name+":"+base64.StdEncoding.EncodeToString(priv)), 0o600); err != nil {
		t.Fatal(err)
	}
	return file, name + ":" + base64.StdEncoding.EncodeToString(pub)
}

func TestNewPushTarget(t *testing.T) {
	dir := t.TempDir()
	key, pub := writeKey(t, dir, "team-cache-1")

	for _, tc := range []struct {
		to, key         string
		compression     string
		fromURL, signed bool
	}{
		{to: "file:///srv/cache", compression: "zstd"},
		{to: "s3://bucket?region=eu-west-1", compression: "zstd"},
		{to: "file:///srv/cache?compression=xz", compression: "xz", fromURL: true},
		{to: "file:///srv/cache?parallel-compression=true", compression: "xz", fromURL: true},
		{to: "https://cache.example?compression=none", compression: "none", fromURL: true},
		{to: "file:///srv/cache", key: key, compression: "zstd", signed: true},
		{to: "file:///srv/cache?secret-key=" + strings.ReplaceAll(strings.ReplaceAll(key, " ", "%20"), "&", "%26"), compression: "zstd", signed: true},
	} {
		got, err := NewPushTarget(tc.to, tc.key)
		if err != nil {
			t.Errorf("NewPushTarget(%q, %q): %v", tc.to, tc.key, err)
			continue
		}
		params := storeURLParams(got.URL)
		wantParam := tc.compression // parallel-compression= alone leaves Nix's default
		if strings.Contains(tc.to, "parallel-compression") {
			wantParam = ""
		}
		if got.Compression != tc.compression || got.CompressionFromURL != tc.fromURL || params["compression"] != wantParam {
			t.Errorf("%q: compression %q (from the URL: %v), nix copy gets %q; want %q (%v)", tc.to, got.Compression, got.CompressionFromURL, got.URL, tc.compression, tc.fromURL)
		}
		if got.Signed() != tc.signed || (tc.signed && (got.PublicKey != pub || params["secret-key"] != key || got.KeyName() != "team-cache-1")) {
			t.Errorf("%q with key %q: public key %q, nix copy gets secret-key=%q; want %v, %q", tc.to, tc.key, got.PublicKey, params["secret-key"], tc.signed, pub)
		}
		if (got.UnsignedWarning() != "") == tc.signed {
			t.Errorf("%q: signed %v but warning %q", tc.to, tc.signed, got.UnsignedWarning())
		}
		if got.Shown != tc.to {
			t.Errorf("shown as %q, want the user's %q", got.Shown, tc.to)
		}
	}

	// A Nix store, not a binary cache: nothing added, nothing warned.
	if got, err := NewPushTarget("ssh-ng://builder", ""); err != nil || got.URL != "ssh-ng://builder" || got.Compression != "" || got.UnsignedWarning() != "" {
		t.Errorf("ssh-ng://builder: %+v, %v", got, err)
	}

	notKey := filepath.Join(dir, "not-a-key")
	os.WriteFile(notKey, []byte("hello"), 0o600)
	for _, tc := range []struct{ to, key, want string }{
		{"/srv/cache", "", "not a store URL"},
		{"file:///srv/cache", filepath.Join(dir, "missing"), "no such file"},
		{"file:///srv/cache", notKey, "not a Nix signing key"},
		{"file:///srv/cache?secret-key=" + key, key, "both name a key"},
		{"ssh-ng://builder", key, "signs binary caches"},
	} {
		_, err := NewPushTarget(tc.to, tc.key)
		var pe *PushURLError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) || pe.Hint() == "" {
			t.Errorf("NewPushTarget(%q, %q) = %v, want a PushURLError saying %q with a hint", tc.to, tc.key, err, tc.want)
		}
	}
}
