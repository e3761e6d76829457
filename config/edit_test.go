package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	toml "github.com/pelletier/go-toml/v2"
)

func TestAddToList(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "claude-sandbox.toml")

	// A missing file gets the key.
	diff, out, err := AddToList(path, "allow", []string{"pypi.org", "github.com:22"})
	if err != nil || !strings.Contains(diff, `+   "pypi.org",`) {
		t.Fatalf("missing file: %q %v", diff, err)
	}
	f, err := Parse(path, out)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := f.Get("allow"); strings.Join(s.List, " ") != "pypi.org github.com:22" {
		t.Fatalf("allow = %v", s.List)
	}

	// An existing list keeps its values, comments and the other keys; only
	// new values are added; a table stays a table.
	orig := "# ours\nwith = [\"python3\"]\nallow = [\n  \"pypi.org\", # the index\n]\nnetwork = \"allowlist\"\n\n[secrets.X]\nenv = \"X\"\n"
	os.WriteFile(path, []byte(orig), 0o644)
	diff, out, err = AddToList(path, "allow", []string{"pypi.org", "files.pythonhosted.org"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(diff, `- allow = [`) || !strings.Contains(diff, `+   "files.pythonhosted.org",`) {
		t.Errorf("diff %q", diff)
	}
	for _, keep := range []string{"# ours", `with = ["python3"]`, `network = "allowlist"`, "[secrets.X]", `env = "X"`} {
		if !strings.Contains(string(out), keep) {
			t.Errorf("lost %q:\n%s", keep, out)
		}
	}
	var got map[string]any
	if err := toml.Unmarshal(out, &got); err != nil {
		t.Fatalf("the result is not TOML: %v\n%s", err, out)
	}
	if a := got["allow"].([]any); len(a) != 2 {
		t.Errorf("allow = %v", a)
	}

	// Nothing new: no diff.
	os.WriteFile(path, out, 0o644)
	if diff, _, err := AddToList(path, "allow", []string{"pypi.org"}); err != nil || diff != "" {
		t.Errorf("nothing to add: %q %v", diff, err)
	}
}
