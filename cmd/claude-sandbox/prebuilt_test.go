package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/nixgen"
)

func TestPrebuiltMatchesOnlyTheDefaultConfiguration(t *testing.T) {
	on, off := true, false
	file := &prebuiltFile{Schema: 1, Closures: []prebuiltClosure{
		{Backend: "alpha", Path: "/nix/store/a-alpha"},
		{Backend: "beta", Network: &off, Path: "/nix/store/b-beta"},
	}}
	cases := []struct {
		name string
		opts nixgen.Canonical
		want string
	}{
		{"alpha", nixgen.Canonical{Backend: "alpha"}, "/nix/store/a-alpha"},
		{"beta without network", nixgen.Canonical{Backend: "beta", Network: &off}, "/nix/store/b-beta"},
		{"beta with network: another closure", nixgen.Canonical{Backend: "beta", Network: &on}, ""},
		{"a backend not prebuilt", nixgen.Canonical{Backend: "gamma"}, ""},
		{"--with", nixgen.Canonical{Backend: "alpha", Packages: [][]string{{"python3"}}}, ""},
		{"--module", nixgen.Canonical{Backend: "beta", Network: &off, Modules: []nixgen.Module{{Path: "/m.nix"}}}, ""},
	}
	for _, c := range cases {
		got := ""
		if p := file.match(c.opts); p != nil {
			got = p.Path
		}
		if got != c.want {
			t.Errorf("%s: matched %q, want %q", c.name, got, c.want)
		}
	}
}

func TestPrebuiltFileErrorsAreUsageErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	cases := map[string]string{
		filepath.Join(dir, "missing.json"):                                                "no such file",
		write("garbage.json", "{"):                                                        "not a prebuilt closure list",
		write("schema.json", `{"schema":2,"closures":[]}`):                                "schema 2",
		write("host.json", `{"schema":1,"closures":[{"backend":"alpha","path":"/etc"}]}`): "not a store path",
	}
	for path, says := range cases {
		_, err := readPrebuilt(path)
		if err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: %v (exit %d), want a usage error saying %q", filepath.Base(path), err, exitCode(err), says)
		}
	}
}
