package manifest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const good = `{"schema":1,"backend":"bubblewrap","bwrap":"/nix/store/a-bwrap/bin/bwrap","env":"/nix/store/b-env",
"path":["/nix/store/b-env/bin"],"shell":"/nix/store/c-bash/bin/bash","usrBinEnv":"/nix/store/d/bin/env",
"claude":"/nix/store/e/bin/claude","nixLd":{"loader":"/nix/store/f/libexec/nix-ld","path":"/lib64/ld-linux-x86-64.so.2","NIX_LD":"/nix/store/g/ld.so","NIX_LD_LIBRARY_PATH":"/nix/store/g/lib"},
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

// The loader's place comes from the closure's platform.
func TestLoaderPathOfAnotherPlatform(t *testing.T) {
	m, err := Load(write(t, strings.Replace(good, `/lib64/ld-linux-x86-64.so.2`, `/lib/ld-linux-aarch64.so.1`, 1)))
	if err != nil || m.NixLd.Path != "/lib/ld-linux-aarch64.so.1" {
		t.Fatalf("aarch64's loader path: %v %+v", err, m)
	}
}

func TestLoadRefusesDamage(t *testing.T) {
	for name, content := range map[string]string{
		"truncated":                good[:len(good)/2],
		"host path":                strings.Replace(good, "/nix/store/c-bash/bin/bash", "/bin/bash", 1),
		"dotdot":                   strings.Replace(good, "/nix/store/c-bash/bin/bash", "/nix/store/../etc/shadow", 1),
		"etc escape":               strings.Replace(good, `["hosts"]`, `["../shadow"]`, 1),
		"future schema":            strings.Replace(good, `"schema":1`, `"schema":99`, 1),
		"missing claude":           strings.Replace(good, `"claude":"/nix/store/e/bin/claude",`, "", 1),
		"no loader path":           strings.Replace(good, `"path":"/lib64/ld-linux-x86-64.so.2",`, "", 1),
		"loader over a host file":  strings.Replace(good, `/lib64/ld-linux-x86-64.so.2`, `/etc/passwd`, 1),
		"loader path escaping":     strings.Replace(good, `/lib64/ld-linux-x86-64.so.2`, `/lib64/../etc/ld.so`, 1),
		"loader in a subdirectory": strings.Replace(good, `/lib64/ld-linux-x86-64.so.2`, `/lib64/x/ld.so`, 1),
	} {
		if _, err := Load(write(t, content)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
