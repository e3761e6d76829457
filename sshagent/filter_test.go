package sshagent

import (
	"errors"
	"strings"
	"testing"
)

const fpA = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"

func TestParseKeyRuleErrors(t *testing.T) {
	for _, tc := range []struct{ entry, msg, hint string }{
		{"", "empty", "SHA256"},
		{"   ", "empty", "SHA256"},
		{"SHA256:tooshort", "not a SHA256 fingerprint", "ssh-add -l"},
		{"SHA256:" + strings.Repeat("A", 44), "not a SHA256 fingerprint", "ssh-add -l"},
		{"SHA256:!!!!VztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s", "not a SHA256 fingerprint", ""},
		{"MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48", "MD5 fingerprints are not accepted", "SHA256"},
		{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host", "public key line", "ssh-keygen -lf"},
		{"me@\x1bwork", "control character", ""},
	} {
		_, err := ParseKeyRule(tc.entry)
		var ke *KeyError
		if !errors.As(err, &ke) {
			t.Errorf("%q: got %v, want a KeyError", tc.entry, err)
			continue
		}
		if !strings.Contains(ke.Error(), tc.msg) || !strings.Contains(ke.Error(), "ssh-keys") {
			t.Errorf("%q: error %q does not say %q and name ssh-keys", tc.entry, ke.Error(), tc.msg)
		}
		if !strings.Contains(ke.Hint(), tc.hint) {
			t.Errorf("%q: hint %q does not mention %q", tc.entry, ke.Hint(), tc.hint)
		}
	}
}

func TestFilterAllows(t *testing.T) {
	f, err := ParseKeys([]string{fpA, "*@work", "deploy-?"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		fp, comment string
		want        bool
	}{
		{fpA, "", true},
		{fpA + "x", "", false},
		{"SHA256:other", "me@work", true},
		{"SHA256:other", "me@workshop", false},
		{"SHA256:other", "/home/me/.ssh/id_ed25519@work", true}, // * crosses /
		{"SHA256:other", "deploy-1", true},
		{"SHA256:other", "deploy-12", false},
		{"SHA256:other", "", false},
	} {
		rule, ok := f.Allows(tc.fp, tc.comment)
		if ok != tc.want {
			t.Errorf("Allows(%q, %q) = %v (%s), want %v", tc.fp, tc.comment, ok, rule, tc.want)
		}
	}
	// A fingerprint written with padding or a lower-case prefix is the same key.
	g, err := ParseKeys([]string{"sha256:" + strings.TrimPrefix(fpA, "SHA256:") + "="})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Allows(fpA, ""); !ok {
		t.Error("a padded, lower-case-prefixed fingerprint does not match")
	}
	none, _ := ParseKeys(nil)
	if _, ok := none.Allows(fpA, "me@work"); ok {
		t.Error("an empty ssh-keys allows a key")
	}
	if _, ok := AllKeys().Allows(fpA, ""); !ok {
		t.Error("AllKeys refuses a key")
	}
	if got := f.fixFor("SHA256:new"); got != `ssh-keys = ["`+fpA+`", "*@work", "deploy-?", "SHA256:new"]` {
		t.Errorf("fix line: %s", got)
	}
}

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"*", "", true},
		{"*", "anything/at/all", true},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"*@work", "@work", true},
		{"?", "", false},
		{"??", "é1", true},
		{"exact", "exact", true},
		{"exact", "exactly", false},
		{"**a", "bbba", true},
		{strings.Repeat("*a", 30) + "b", strings.Repeat("a", 60), false}, // no exponential blow-up
	} {
		if got := globMatch(tc.p, tc.s); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tc.p, tc.s, got, tc.want)
		}
	}
}

func TestWideningKeys(t *testing.T) {
	if got := WideningKeys([]string{fpA}, nil, false); got != nil {
		t.Errorf("user left ssh-keys unset (every key): a project list narrows, got widenings %v", got)
	}
	got := WideningKeys([]string{"sha256:" + strings.TrimPrefix(fpA, "SHA256:"), "*@home"}, []string{fpA, "*@work"}, true)
	if len(got) != 1 || got[0] != "*@home" {
		t.Errorf("widenings = %v, want [*@home]", got)
	}
	if got := WideningKeys([]string{"x"}, []string{}, true); len(got) != 1 {
		t.Errorf("user allows no key, project allows one: widenings = %v", got)
	}
}
