package secrets

import (
	"bytes"
	"encoding/base64"
	"io"
	"slices"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/streamreplace"
)

// Injector puts real values back for one destination: the proxy, having
// terminated TLS for a bound host, passes each request header (and, for
// secrets that allow it, the body) through it.
type Injector struct {
	secrets []*Secret
}

// For returns the injector for requests to host:port, or nil when no
// resolved secret is bound there (the proxy then has nothing to do, and
// need not terminate TLS).
func (s *Set) For(host string, port int) *Injector {
	if s == nil {
		return nil
	}
	var in Injector
	for _, sec := range s.secrets {
		if sec.Status == Resolved && sec.MatchesHost(host, port) {
			in.secrets = append(in.secrets, sec)
		}
	}
	if len(in.secrets) == 0 {
		return nil
	}
	return &in
}

// Header returns a header's value with every placeholder of a secret
// bound here replaced by its real value, and the names of the secrets it
// put in (for the log). Basic credentials (Authorization and
// Proxy-Authorization) are decoded and re-encoded: git sends a token as
// the password of `Basic base64(user:token)`.
func (in *Injector) Header(name, value string) (string, []string) {
	if in == nil {
		return value, nil
	}
	var used []string
	value = in.replace(value, &used)
	if strings.EqualFold(name, "Authorization") || strings.EqualFold(name, "Proxy-Authorization") {
		if scheme, cred, ok := strings.Cut(value, " "); ok && strings.EqualFold(scheme, "Basic") {
			if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred)); err == nil {
				var inner []string
				if replaced := in.replace(string(raw), &inner); len(inner) > 0 {
					value = scheme + " " + base64.StdEncoding.EncodeToString([]byte(replaced))
					used = append(used, inner...)
				}
			}
		}
	}
	return value, used
}

// Body returns a request body with the placeholders of the secrets bound
// here that allow bodies replaced, and their names. Values are usually as
// long as their placeholders (see newPlaceholder); when one is not, the
// caller must fix Content-Length.
func (in *Injector) Body(body []byte) ([]byte, []string) {
	if in == nil {
		return body, nil
	}
	var used []string
	for _, sec := range in.secrets {
		if sec.Bodies && bytes.Contains(body, []byte(sec.placeholder)) {
			body = bytes.ReplaceAll(body, []byte(sec.placeholder), []byte(string(sec.value)))
			used = append(used, sec.Name)
		}
	}
	return body, used
}

func (in *Injector) replace(s string, used *[]string) string {
	for _, sec := range in.secrets {
		if strings.Contains(s, sec.placeholder) {
			s = strings.ReplaceAll(s, sec.placeholder, string(sec.value))
			*used = append(*used, sec.Name)
		}
	}
	return s
}

// Mask replaces every real value in data flowing back into the sandbox (a
// response that echoes a token, an error quoting it) with its
// placeholder, whichever host sent it.
func (s *Set) Mask(data []byte) []byte {
	if s == nil {
		return data
	}
	for _, sec := range s.byLength() {
		if v := []byte(string(sec.value)); bytes.Contains(data, v) {
			data = bytes.ReplaceAll(data, v, []byte(sec.placeholder))
		}
	}
	return data
}

// Bodies says whether a secret bound here may be put into request
// bodies: only then must the proxy read a body before sending it.
func (in *Injector) Bodies() bool {
	if in == nil {
		return false
	}
	for _, sec := range in.secrets {
		if sec.Bodies {
			return true
		}
	}
	return false
}

// MaskReader is Mask for a stream (a response body): it returns what r
// gives with every real value replaced by its placeholder, holding back
// only a tail that could be the start of a value.
func (s *Set) MaskReader(r io.Reader) io.Reader {
	if s == nil {
		return r
	}
	var pairs []streamreplace.Pair
	for _, sec := range s.byLength() {
		pairs = append(pairs, streamreplace.Pair{Old: []byte(string(sec.value)), New: []byte(sec.placeholder)})
	}
	return streamreplace.NewReader(r, pairs)
}

// MaskKeepsLength says whether masking leaves data's length unchanged
// (every placeholder as long as its value, the usual case): a response's
// Content-Length then still holds.
func (s *Set) MaskKeepsLength() bool {
	if s == nil {
		return true
	}
	for _, sec := range s.byLength() {
		if len(sec.value) != len(sec.placeholder) {
			return false
		}
	}
	return true
}

// Hosts are the hosts of every resolved secret, without ports, as
// written ("api.example.com", "*.github.com", "127.0.0.1", "::1"): the
// names the proxy's certificate authority may issue for.
func (s *Set) Hosts() []string {
	if s == nil {
		return nil
	}
	var out []string
	for _, sec := range s.secrets {
		if sec.Status != Resolved {
			continue
		}
		for _, h := range sec.Hosts {
			if host := h.Host(); !slices.Contains(out, host) {
				out = append(out, host)
			}
		}
	}
	return out
}
