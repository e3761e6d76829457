package secrets

import (
	"crypto/rand"
	"fmt"
	"math"
	"math/big"
	"strings"
)

// A placeholder stands for a secret inside the sandbox. It is made fresh
// for every sandbox run from crypto/rand and shaped like the real value,
// so clients that check a token's format (a prefix, a length, a character
// set) accept it:
//
//   - it keeps the value's public prefix — the configured prefix, else
//     the longest known prefix of a token format (sk-ant-api03-, ghp_, …)
//     — and nothing else of it;
//   - the rest has the value's length and is drawn uniformly from the
//     smallest standard alphabet holding the value's characters (digits,
//     hex, lower or upper alphanumerics, base62, base64url, base64 with
//     its padding kept); with other punctuation, base62 plus exactly the
//     punctuation the value uses;
//   - when that would give less than minBits bits of randomness (a short
//     secret) it is made longer until it does: uniqueness matters more
//     than shape there.
//
// So a placeholder reveals the prefix, the length and the alphabet: for a
// token format, facts its documentation publishes anyway. Being as long
// as the value (the usual case), replacing it in a body keeps the body's
// length.

// minBits is the least randomness a placeholder carries: enough that no
// other string a sandbox sends matches it by chance.
const minBits = 96

// knownPrefixes are public prefixes of token formats (their providers
// document them; secret scanners match on them).
var knownPrefixes = []string{
	"sk-ant-api03-", "sk-ant-admin01-", "sk-ant-oat01-", "sk-ant-ort01-", "sk-ant-",
	"sk-proj-", "sk-svcacct-", "sk-admin-", "sk-or-v1-", "sk-",
	"ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
	"glpat-", "xoxb-", "xoxp-", "xapp-", "hf_", "npm_", "pypi-", "gsk_", "xai-", "pplx-", "r8_",
	"sk_live_", "sk_test_", "rk_live_", "rk_test_", "AIza", "dop_v1_", "lin_api_", "ntn_", "tvly-",
}

// publicPrefix is the part of a value a placeholder keeps.
func publicPrefix(value, configured string) string {
	if configured != "" && strings.HasPrefix(value, configured) && len(configured) < len(value) {
		return configured
	}
	best := ""
	for _, p := range knownPrefixes {
		if strings.HasPrefix(value, p) && len(p) > len(best) && len(p) < len(value) {
			best = p
		}
	}
	return best
}

const (
	digits   = "0123456789"
	lowerHex = "0123456789abcdef"
	upperHex = "0123456789ABCDEF"
	lower    = "abcdefghijklmnopqrstuvwxyz"
	upper    = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	base62   = upper + lower + digits
)

// standardAlphabets, smallest first.
var standardAlphabets = []string{
	digits, lowerHex, upperHex, lower + digits, upper + digits, base62, base62 + "-_", base62 + "+/",
}

// alphabetOf is the smallest standard alphabet holding every character of
// body (which has no padding).
func alphabetOf(body string) string {
	for _, a := range standardAlphabets {
		if onlyFrom(body, a) {
			return a
		}
	}
	a := base62
	for i := 0; i < len(body); i++ {
		c := body[i]
		if c > 0x20 && c < 0x7f && !strings.ContainsRune(a, rune(c)) {
			a += string(c)
		}
	}
	return a
}

func onlyFrom(s, alphabet string) bool {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(alphabet, s[i]) < 0 {
			return false
		}
	}
	return true
}

// NewPlaceholder makes a placeholder for value, as Resolve does for a
// secret: for values the supervisor learns otherwise (Claude Code's
// login tokens). prefix is a configured public prefix, or "".
func NewPlaceholder(value, prefix string) (string, error) { return newPlaceholder(value, prefix) }

// newPlaceholder makes a placeholder for value.
func newPlaceholder(value, configuredPrefix string) (string, error) {
	prefix := publicPrefix(value, configuredPrefix)
	body := value[len(prefix):]
	padding := ""
	if trimmed := strings.TrimRight(body, "="); len(trimmed) != len(body) && onlyFrom(trimmed, base62+"+/-_") {
		body, padding = trimmed, body[len(trimmed):]
	}
	alphabet := alphabetOf(body)
	n := len(body)
	perChar := math.Log2(float64(len(alphabet)))
	if need := int(math.Ceil(minBits / perChar)); n < need {
		n = need
	}
	for {
		random, err := randomString(alphabet, n)
		if err != nil {
			return "", fmt.Errorf("making a placeholder: %w", err)
		}
		p := prefix + random + padding
		if p != value {
			return p, nil
		}
	}
}

func randomString(alphabet string, n int) (string, error) {
	max := big.NewInt(int64(len(alphabet)))
	b := make([]byte, n)
	for i := range b {
		k, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", err
		}
		b[i] = alphabet[k.Int64()]
	}
	return string(b), nil
}
