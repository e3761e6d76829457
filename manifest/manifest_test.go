package manifest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const good = `{"schema":1,"backend":"bubblewrap","bwrap":"/nix/store/a-bwrap/bin/bwrap","env":"/nix/store/b-env",
"path":["/nix/store/b-env/bin"],"shell":"/nix/store/c-bash/bin/bash","usrBinEnv":"/nix/store/d/bin/env",
"claude":"/nix/store/e/bin/claude","nixLd":{"loader":"/nix/store/f/libexec/nix-ld","NIX_LD":"/nix/store/g/ld.so","NIX_LD_LIBRARY_PATH":"/nix/store/g/lib"},
"hostEtc":["hosts"],"packages":["git"]}`

func write(t *testing.T, content string) string {
	out := t.TempDir()
	p := Of(out)
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, []byte(content), 0o644)
	return out
}

func TestLoad(t *testing.T) {
	m, err := Load(write(t, good))
	if err != nil {
		t.Fatal(err)
	}
	if m.Shell != "/nix/store/c-bash/bin/bash" || m.NixLd.NixLdLibraryDir != "/nix/store/g/lib" {
		t.Fatalf("fields not read: %+v", m)
	}
}

func TestLoadRefusesDamage(t *testing.T) {
	for name, content := range map[string]string{
		"truncated":      good[:len(good)/2],
		"host path":      strings.Replace(good, "/nix/store/c-bash/bin/bash", "/bin/bash", 1),
		"dotdot":         strings.Replace(good, "/nix/store/c-bash/bin/bash", "/nix/store/../etc/shadow", 1),
		"etc escape":     strings.Replace(good, `["hosts"]`, `["../shadow"]`, 1),
		"future schema":  strings.Replace(good, `"schema":1`, `"schema":99`, 1),
		"missing claude": strings.Replace(good, `"claude":"/nix/store/e/bin/claude",`, "", 1),
	} {
		if _, err := Load(write(t, content)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
