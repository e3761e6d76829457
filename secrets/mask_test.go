package secrets

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

func maskSet(t *testing.T) *Set {
	t.Helper()
	var bs []Binding
	for name, hosts := range map[string][]string{"A": {"a.example.com", "*.b.example"}, "B": {"127.0.0.1:8443", "a.example.com"}} {
		b := Binding{Name: name, Variable: name, Bodies: name == "B", Source: Source{Kind: FromEnv, Env: name}}
		for _, h := range hosts {
			p, err := ParseHost(h)
			if err != nil {
				t.Fatal(err)
			}
			b.Hosts = append(b.Hosts, p)
		}
		bs = append(bs, b)
	}
	slices.SortFunc(bs, func(x, y Binding) int { return strings.Compare(x.Name, y.Name) })
	vals := map[string]string{"A": "ghp_0123456789abcdefghijklmnopqrstuvwxyz", "B": "short"}
	return Resolve(context.Background(), bs, Options{LookupEnv: func(k string) (string, bool) { v, ok := vals[k]; return v, ok }})
}

func TestMaskReaderAndHosts(t *testing.T) {
	s := maskSet(t)
	env := s.Env()
	in := "x ghp_0123456789abcdefghijklmnopqrstuvwxyz y short z"
	got, err := io.ReadAll(s.MaskReader(iotest.OneByteReader(strings.NewReader(in))))
	if err != nil || string(got) != string(s.Mask([]byte(in))) || strings.Contains(string(got), "short") || !strings.Contains(string(got), env["A"]) {
		t.Fatalf("%q %v", got, err)
	}
	// "short" is under 96 bits: its placeholder is longer, so masking
	// changes lengths.
	if s.MaskKeepsLength() {
		t.Error("MaskKeepsLength with a short secret")
	}
	if h := s.Hosts(); !slices.Equal(h, []string{"a.example.com", "*.b.example", "127.0.0.1"}) {
		t.Errorf("Hosts %v", h)
	}
	if !s.For("127.0.0.1", 8443).Bodies() || s.For("x.b.example", 443).Bodies() || (*Injector)(nil).Bodies() {
		t.Error("Bodies")
	}
	if p, err := NewPlaceholder("sk-ant-oat01-"+strings.Repeat("x", 90), ""); err != nil || !strings.HasPrefix(p, "sk-ant-oat01-") || len(p) != 103 {
		t.Errorf("NewPlaceholder %q %v", p, err)
	}
}
