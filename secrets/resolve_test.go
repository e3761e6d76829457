package secrets

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func binding(t *testing.T, toml string) Binding {
	t.Helper()
	cfg := mustParse(t, toml)
	eff, err := Effective(false, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range eff {
		if !b.BuiltIn || b.set != 0 {
			if b.Name == cfg.Secrets[0].Name {
				return b
			}
		}
	}
	t.Fatalf("no binding in %q", toml)
	return Binding{}
}

func resolveOne(t *testing.T, b Binding, opts Options) *Secret {
	t.Helper()
	set := Resolve(context.Background(), []Binding{b}, opts)
	return set.Secrets()[0]
}

const anthropicKey = "sk-ant-api03-Xq3_vL9-pR2mZ8kT4nW7yB1cF6hJ0dG5sA3eU8iO2lK9pQ4rT7vY1xZ6bN3mC8fH2jD5gS0aE4wR7tU9iO1pL6kJ3hG8fD2sA5qW-zX_cV7bN0mAA"

func TestEnvSource(t *testing.T) {
	builtin := BuiltIns(false)[0]
	s := resolveOne(t, builtin, Options{LookupEnv: env(map[string]string{"ANTHROPIC_API_KEY": anthropicKey})})
	if s.Status != Resolved || !strings.HasPrefix(s.Placeholder(), "sk-ant-api03-") || s.Placeholder() == anthropicKey {
		t.Fatalf("built-in from the host environment: %v %q", s, s.Placeholder())
	}
	// A built-in whose variable is not set is simply absent: no warning.
	set := Resolve(context.Background(), []Binding{builtin}, Options{LookupEnv: env(nil)})
	if set.Secrets()[0].Status != Absent || len(set.Warnings()) != 0 || len(set.Env()) != 0 {
		t.Errorf("unset built-in: %v, warnings %v", set, set.Warnings())
	}
	// A configured env source that is unset fails, with a warning, and the
	// variable stays unset.
	mine := binding(t, "[secrets.OPENAI_API_KEY]\nhosts = [\"api.openai.com\"]\nenv = \"OPENAI_KEY_ON_HOST\"\n")
	set = Resolve(context.Background(), []Binding{mine}, Options{LookupEnv: env(nil)})
	if s := set.Secrets()[0]; s.Status != Failed || !strings.Contains(s.Err.Error(), "OPENAI_KEY_ON_HOST is not set") {
		t.Errorf("unset configured variable: %v %v", s, s.Err)
	}
	if _, ok := set.Env()["OPENAI_API_KEY"]; ok {
		t.Error("a failed secret has a variable in the sandbox")
	}
	if w := set.Warnings(); len(w) != 1 || !strings.Contains(w[0], "OPENAI_API_KEY is not set in the sandbox") {
		t.Errorf("warnings: %v", w)
	}
	set = Resolve(context.Background(), []Binding{mine}, Options{LookupEnv: env(map[string]string{"OPENAI_KEY_ON_HOST": ""})})
	if s := set.Secrets()[0]; s.Status != Failed || !strings.Contains(s.Err.Error(), "is empty") {
		t.Errorf("empty configured variable: %v %v", s, s.Err)
	}
	rec := &logRecorder{}
	set.Log(rec)
	if len(rec.entries) != 1 || rec.entries[0].Service != "secret" || rec.entries[0].Decision != sessionlog.Note || rec.entries[0].Target != "OPENAI_API_KEY" {
		t.Errorf("session log: %+v", rec.entries)
	}
}

type logRecorder struct{ entries []sessionlog.Entry }

func (r *logRecorder) Log(e sessionlog.Entry) { r.entries = append(r.entries, e) }

func command(t *testing.T, argv ...string) Binding {
	t.Helper()
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = fmt.Sprintf("%q", a)
	}
	return binding(t, "[secrets.TOKEN]\nhosts = [\"api.example.com\"]\ncommand = ["+strings.Join(q, ", ")+"]\n")
}

func TestCommandSource(t *testing.T) {
	testenv.RequireProgram(t, "sh")
	testenv.RequireProgram(t, "printf")
	for _, tc := range []struct {
		name  string
		argv  []string
		value string // want Resolved with this value
		err   string // want Failed saying this
	}{
		{"one trailing newline trimmed", []string{"printf", `%s\n`, "tok-123"}, "tok-123", ""},
		{"CRLF trimmed", []string{"printf", `%s\r\n`, "tok-123"}, "tok-123", ""},
		{"no shell: argv as given", []string{"printf", "%s", "$HOME;echo x"}, "$HOME;echo x", ""},
		{"only one newline trimmed", []string{"printf", `%s\n\n`, "tok"}, "", "more than one line"},
		{"two lines", []string{"printf", `pw\nlogin: me\n`}, "", "pass show NAME | head -n1"},
		{"exit status and stderr's last line", []string{"sh", "-c", "echo first >&2; echo 'gpg: decryption failed: No secret key' >&2; exit 2"},
			"", "exit status 2): gpg: decryption failed: No secret key"},
		{"not found", []string{"no-such-program-for-secrets"}, "", "not found on PATH"},
		{"empty output", []string{"true"}, "", "gave an empty value"},
		{"stdin is not the terminal", []string{"cat"}, "", "gave an empty value"},
		{"too much output", []string{"head", "-c", "70000", "/dev/zero"}, "", "more than 64 KiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := resolveOne(t, command(t, tc.argv...), Options{})
			if tc.err != "" {
				if s.Status != Failed || !strings.Contains(s.Err.Error(), tc.err) {
					t.Fatalf("got %v (%v), want failure saying %q", s, s.Err, tc.err)
				}
				return
			}
			if s.Status != Resolved || string(s.value) != tc.value {
				t.Fatalf("got %v %v, want the value %q", s, s.Err, tc.value)
			}
		})
	}
}

func TestCommandTimeoutKillsTheGroup(t *testing.T) {
	testenv.RequireProgram(t, "sh")
	b := command(t, "sh", "-c", "sleep 60 & sleep 60")
	b.Source.Timeout = time.Second
	start := time.Now()
	s := resolveOne(t, b, Options{})
	if s.Status != Failed || !strings.Contains(s.Err.Error(), "did not finish within 1s") {
		t.Fatalf("got %v %v", s, s.Err)
	}
	// The background sleep holds stdout; the whole group is killed, so
	// resolution does not wait for it.
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("resolution took %s", d)
	}
}

func TestCommandInsideTheSandboxRefused(t *testing.T) {
	project := t.TempDir()
	prog := filepath.Join(project, "get-secret")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\necho value\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := resolveOne(t, command(t, prog), Options{Inside: []string{project}})
	if s.Status != Failed || !strings.Contains(s.Err.Error(), "which the sandbox can write") {
		t.Fatalf("a command in the project: %v %v", s, s.Err)
	}
	if s := resolveOne(t, command(t, prog), Options{}); s.Status != Resolved || string(s.value) != "value" {
		t.Fatalf("the same command outside any sandbox directory: %v %v", s, s.Err)
	}
}

func fileBinding(t *testing.T, path string) Binding {
	return binding(t, fmt.Sprintf("[secrets.TOKEN]\nhosts = [\"api.example.com\"]\nfile = %q\n", path))
}

func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "file-secret\n", 0o400)
	// agenix and sops-nix expose secrets through symlinks into a generation directory.
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, value, err string
		inside                 []string
	}{
		{"a private file", good, "file-secret", "", nil},
		{"through a symlink", link, "file-secret", "", nil},
		{"group-writable", write("gw", "x", 0o620), "", "writable by its group (mode 0620): they could replace the secret", nil},
		{"world-writable", write("ww", "x", 0o602), "", "writable by others", nil},
		{"missing", filepath.Join(dir, "missing"), "", "does not exist", nil},
		{"a FIFO does not block", fifo, "", "not a regular file", nil},
		{"a directory", dir, "", "not a regular file", nil},
		{"empty", write("empty", "", 0o600), "", "empty value", nil},
		{"too large", write("large", strings.Repeat("a", 70000), 0o600), "", "larger than 64 KiB", nil},
		{"inside the sandbox", good, "", "which the sandbox can read", []string{dir}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := resolveOne(t, fileBinding(t, tc.path), Options{Inside: tc.inside})
			if tc.err != "" {
				if s.Status != Failed || !strings.Contains(s.Err.Error(), tc.err) {
					t.Fatalf("got %v (%v), want failure saying %q", s, s.Err, tc.err)
				}
				return
			}
			if s.Status != Resolved || string(s.value) != tc.value {
				t.Fatalf("got %v %v", s, s.Err)
			}
		})
	}
	if strings.Contains(resolveOne(t, fileBinding(t, good), Options{Inside: []string{dir}}).Err.Error(), "file-secret") {
		t.Error("an error shows the value")
	}
	if os.Geteuid() == 0 {
		other := write("other", "x", 0o600)
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if s := resolveOne(t, fileBinding(t, other), Options{}); s.Status != Failed || !strings.Contains(s.Err.Error(), "owned by uid 65534") {
			t.Errorf("a file of another user: %v %v", s, s.Err)
		}
	}
}

func TestNothingShowsAValue(t *testing.T) {
	s := resolveOne(t, BuiltIns(false)[0], Options{LookupEnv: env(map[string]string{"ANTHROPIC_API_KEY": anthropicKey})})
	set := &Set{secrets: []*Secret{s}}
	for _, out := range []string{
		fmt.Sprintf("%v %+v %#v %s", s, s, s, s),
		fmt.Sprintf("%v %+v %#v", *s, *s, *s),
		fmt.Sprintf("%v %+v %#v", set, set, *set),
		strings.Join(set.Warnings(), ""),
	} {
		if strings.Contains(out, anthropicKey) || strings.Contains(out, anthropicKey[13:40]) {
			t.Errorf("formatting shows the value: %s", out)
		}
	}
	h := Check(context.Background(), []Binding{BuiltIns(false)[0]}, Options{LookupEnv: env(map[string]string{"ANTHROPIC_API_KEY": anthropicKey})})
	if line := h[0].String(); strings.Contains(line, anthropicKey[13:]) || !strings.Contains(line, "ANTHROPIC_API_KEY: ok (env ANTHROPIC_API_KEY) built-in → api.anthropic.com") {
		t.Errorf("doctor line: %s", line)
	}
}

func TestHealth(t *testing.T) {
	ok := binding(t, "[secrets.gh]\nvariable = \"GH_TOKEN\"\nhosts = [\"github.com\", \"*.github.com\"]\ncommand = [\"printf\", \"ghp_abc\"]\nbodies = true\n")
	bad := binding(t, "[secrets.OPENAI_API_KEY]\nhosts = [\"api.openai.com\"]\nfile = \"/nonexistent/openai\"\n")
	hs := Check(context.Background(), []Binding{ok, bad, BuiltIns(false)[0]}, Options{LookupEnv: env(nil)})
	want := []string{
		"GH_TOKEN: ok (command printf ghp_abc) [secrets.gh] → github.com, *.github.com, headers and bodies",
		"OPENAI_API_KEY: FAILED (file /nonexistent/openai) → api.openai.com: file /nonexistent/openai does not exist",
		"ANTHROPIC_API_KEY: not set (env ANTHROPIC_API_KEY) built-in → api.anthropic.com",
	}
	for i, h := range hs {
		if h.String() != want[i] {
			t.Errorf("health %d:\n got %s\nwant %s", i, h, want[i])
		}
	}
}

func TestSealRoundTrip(t *testing.T) {
	bs, err := Effective(false)
	if err != nil {
		t.Fatal(err)
	}
	set := Resolve(context.Background(), bs, Options{LookupEnv: func(string) (string, bool) { return "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789", true }})
	sealed := set.Seal()
	if len(sealed) != 1 || fmt.Sprint(sealed) == "" || strings.Contains(fmt.Sprintf("%v %#v", sealed, sealed[0]), "abcdefghij") {
		t.Fatalf("sealed: %v", sealed)
	}
	back, err := Unseal(sealed)
	if err != nil {
		t.Fatal(err)
	}
	in := back.For("api.anthropic.com", 443)
	got, used := in.Header("x-api-key", sealed[0].Placeholder)
	if got != sealed[0].Value || len(used) != 1 {
		t.Fatalf("unsealed set does not substitute: %v", used)
	}
	if back.For("example.com", 443) != nil {
		t.Fatal("unsealed set is bound to another host")
	}
}
