package sshagent

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// ConfigKey is the configuration setting that lists the allowed keys.
const ConfigKey = "ssh-keys"

// Filter decides which of the host agent's keys the sandbox may see and
// use. The zero value allows none; AllKeys allows every key.
type Filter struct {
	all   bool
	rules []KeyRule
}

// KeyRule is one entry of ssh-keys: a key's SHA256 fingerprint, as
// `ssh-add -l` and `ssh-keygen -lf` print it, or a glob over the key's
// comment (* for any run of characters, ? for one).
type KeyRule struct {
	Text        string // as written
	fingerprint string // "SHA256:<43 base64 characters>", when a fingerprint rule
	glob        string // when a comment rule
}

// AllKeys is the default when ssh-keys is not set: every key of the host
// agent, as the sandbox had with the raw socket, minus key management.
func AllKeys() *Filter { return &Filter{all: true} }

// KeyError is an ssh-keys entry that cannot be used.
type KeyError struct {
	Entry string
	Msg   string
	hint  string
}

func (e *KeyError) Error() string { return fmt.Sprintf("%s: %q: %s", ConfigKey, e.Entry, e.Msg) }

// Hint is a one-line suggestion.
func (e *KeyError) Hint() string { return e.hint }

const keysHint = `entries are SHA256 fingerprints (ssh-add -l, ssh-keygen -lf KEY.pub) or comment globs: ssh-keys = ["SHA256:…", "*@work"]`

// ParseKeys parses the ssh-keys list. An empty list allows no key: the
// sandbox then gets an agent with nothing in it. (Unset means AllKeys; the
// caller decides which applies.)
func ParseKeys(entries []string) (*Filter, error) {
	f := &Filter{}
	for _, e := range entries {
		r, err := ParseKeyRule(e)
		if err != nil {
			return nil, err
		}
		f.rules = append(f.rules, r)
	}
	return f, nil
}

// ParseKeyRule parses one entry.
func ParseKeyRule(entry string) (KeyRule, error) {
	text := strings.TrimSpace(entry)
	bad := func(msg, hint string) (KeyRule, error) {
		return KeyRule{}, &KeyError{Entry: entry, Msg: msg, hint: hint}
	}
	if text == "" {
		return bad("empty", keysHint)
	}
	kind, rest, hasColon := strings.Cut(text, ":")
	switch {
	case hasColon && strings.EqualFold(kind, "SHA256"):
		raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(rest, "="))
		if err != nil || len(raw) != sha256.Size {
			return bad("not a SHA256 fingerprint (43 base64 characters after SHA256:)",
				"copy it from `ssh-add -l` on the host, e.g. SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s")
		}
		return KeyRule{Text: text, fingerprint: "SHA256:" + base64.RawStdEncoding.EncodeToString(raw)}, nil
	case hasColon && strings.EqualFold(kind, "MD5"):
		return bad("MD5 fingerprints are not accepted", "use the SHA256 fingerprint: ssh-add -l (or ssh-keygen -lf KEY.pub) prints it")
	case looksLikePublicKey(text):
		return bad("a public key line, not a fingerprint", "write its fingerprint instead: ssh-keygen -lf KEY.pub")
	}
	for _, r := range text {
		if r < 0x20 || r == 0x7f {
			return bad("contains a control character", keysHint)
		}
	}
	return KeyRule{Text: text, glob: text}, nil
}

// looksLikePublicKey spots a pasted authorized_keys line ("ssh-ed25519 AAAA…").
func looksLikePublicKey(s string) bool {
	algo, blob, ok := strings.Cut(s, " ")
	return ok && strings.HasPrefix(strings.TrimSpace(blob), "AAAA") && !strings.ContainsAny(algo, "*?@")
}

// Allows says whether the sandbox may use a key of the host agent, and
// which rule decided (the text a log entry shows).
func (f *Filter) Allows(fingerprint, comment string) (rule string, ok bool) {
	if f.all {
		return "default: every key of the host agent (" + ConfigKey + " not set)", true
	}
	for _, r := range f.rules {
		if r.fingerprint != "" && r.fingerprint == fingerprint {
			return fmt.Sprintf("%s entry %q", ConfigKey, r.Text), true
		}
		if r.glob != "" && globMatch(r.glob, comment) {
			return fmt.Sprintf("%s entry %q", ConfigKey, r.Text), true
		}
	}
	return f.String(), false
}

// String renders the filter as its configuration line.
func (f *Filter) String() string {
	if f.all {
		return ConfigKey + " not set (every key)"
	}
	q := make([]string, len(f.rules))
	for i, r := range f.rules {
		q[i] = strconv.Quote(r.Text)
	}
	return ConfigKey + " = [" + strings.Join(q, ", ") + "]"
}

// fixFor is the configuration line that would allow a key.
func (f *Filter) fixFor(fingerprint string) string {
	entries := make([]string, 0, len(f.rules)+1)
	for _, r := range f.rules {
		entries = append(entries, strconv.Quote(r.Text))
	}
	entries = append(entries, strconv.Quote(fingerprint))
	return ConfigKey + " = [" + strings.Join(entries, ", ") + "]"
}

// globMatch matches a whole comment: * is any run of characters (a
// comment is often a path, so / is nothing special), ? is one character,
// anything else is itself.
func globMatch(pattern, s string) bool {
	p, str := []rune(pattern), []rune(s)
	// Iterative matching with one backtrack point: linear in practice, and
	// never exponential however many stars an entry has.
	pi, si, star, mark := 0, 0, -1, 0
	for si < len(str) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == str[si]):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// Fingerprint is a key blob's SHA256 fingerprint as OpenSSH prints it. A
// certificate's is its key's (ssh-add -l shows the same), so a rule naming
// a key also covers its certificates.
func Fingerprint(blob []byte) string {
	if k, err := ssh.ParsePublicKey(blob); err == nil {
		if cert, ok := k.(*ssh.Certificate); ok {
			blob = cert.Key.Marshal()
		}
	}
	sum := sha256.Sum256(blob)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// WideningKeys lists the entries of a project's ssh-keys that give the
// sandbox keys the user's own setting does not (userSet false: the user
// left ssh-keys unset, which already allows every key, so a project's list
// can only narrow). An entry counts as the same when written the same.
func WideningKeys(project, user []string, userSet bool) []string {
	if !userSet {
		return nil
	}
	have := map[string]bool{}
	for _, u := range user {
		if r, err := ParseKeyRule(u); err == nil {
			have[r.fingerprint+"\x00"+r.glob] = true
		}
	}
	var out []string
	for _, p := range project {
		r, err := ParseKeyRule(p)
		if err != nil || !have[r.fingerprint+"\x00"+r.glob] {
			out = append(out, p)
		}
	}
	return out
}
