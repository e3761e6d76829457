package bubblewrap

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/internal/launchtest"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

var (
	handManifest = launchtest.Manifest
	env          = launchtest.Env
	index        = launchtest.Index
)

// plan is what a launch decides for rt, without starting anything.
func plan(t *testing.T, m *manifest.Manifest, rt *launch.Runtime) *launch.Plan {
	t.Helper()
	p := launch.NewPlan(Backend{}, m, rt, "0123456789ab")
	if err := (Backend{}).Plan(p, m, rt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Invocation.Close)
	return p
}

func TestBubblewrapMountsAndOrder(t *testing.T) {
	rt := &launch.Runtime{Project: "/tmp/proj", Home: "/home/u", User: "u", Network: true, LookupEnv: env(nil)}
	a := plan(t, handManifest(), rt).Invocation.Args
	for _, seq := range [][]string{
		{"--unshare-pid"}, {"--unshare-ipc"}, {"--unshare-uts"},
		{"--ro-bind", "/nix/store", "/nix/store"},
		{"--bind", "/tmp/proj", "/tmp/proj"},
		{"--tmpfs", "/home"},
		{"--symlink", handManifest().Shell, "/bin/sh"},
		{"--symlink", handManifest().UsrBinEnv, "/usr/bin/env"},
		{"--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"},
	} {
		if index(a, seq...) < 0 {
			t.Errorf("missing %v in %v", seq, a)
		}
	}
	// A network namespace of its own in every mode: its proxy is its way out.
	if index(a, "--unshare-net") < 0 {
		t.Error("the sandbox shares the host's network namespace")
	}
	if index(a, "--tmpfs", "/tmp") > index(a, "--bind", "/tmp/proj", "/tmp/proj") {
		t.Error("the /tmp tmpfs comes after the project bind and would hide a project under /tmp")
	}
	// bwrap runs the keeper that holds the sandbox open; the session's
	// command (Claude Code told where it runs) joins it.
	if dash := slices.Index(a, "--"); dash < 0 || !slices.Equal(a[dash+1:], []string{"/nix/store/0000000000000000000000000000000a-coreutils/bin/cat"}) {
		t.Errorf("bwrap runs %q, want the keeper", a[slices.Index(a, "--")+1:])
	}
	if index(a, "--die-with-parent") >= 0 {
		t.Error("--die-with-parent: the sandbox would end with the launch that started it, under its other sessions")
	}
	session := plan(t, handManifest(), rt).Invocation.Session
	if len(session) != 3 || session[0] != handManifest().Claude || session[1] != "--append-system-prompt" ||
		!strings.HasPrefix(session[2], "You are running inside claude-sandbox (bubblewrap backend)") {
		t.Errorf("the session's command is %q, want Claude Code told where it runs", session)
	}
	for _, arg := range a {
		if strings.Contains(arg, "sk-") {
			t.Errorf("a secret is on the command line: %q", arg)
		}
	}

	rt.Network = false
	if index(plan(t, handManifest(), rt).Invocation.Args, "--unshare-net") < 0 {
		t.Error("--no-network did not unshare the network")
	}
}

func TestBubblewrapHomeOutsideHome(t *testing.T) {
	rt := &launch.Runtime{Project: "/srv/p", Home: "/root", User: "root", LookupEnv: env(nil)}
	if a := plan(t, handManifest(), rt).Invocation.Args; index(a, "--tmpfs", "/root") < 0 {
		t.Fatalf("a home outside /home must get its own tmpfs: %v", a)
	}
}

func TestBubblewrapFullSandbox(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	home := t.TempDir()
	t.Setenv("HOME", home) // the user's own home: ~/.claude is made there
	os.WriteFile(filepath.Join(home, ".claude.json"), []byte(`{"secret":"sk-login"}`), 0o600)
	os.Mkdir(filepath.Join(home, ".ssh"), 0o700)
	for _, f := range []string{"config", "known_hosts", "id_ed25519", "id_ed25519.pub", "id_rsa-work"} {
		os.WriteFile(filepath.Join(home, ".ssh", f), []byte("x"), 0o600)
	}
	proj := t.TempDir()
	state, err := launch.ProjectStatePath(proj)
	if err != nil {
		t.Fatal(err)
	}
	rt := &launch.Runtime{Project: proj, Home: home, User: "u", Network: true, StateDir: state, LookupEnv: env(nil)}
	p := plan(t, handManifest(), rt)
	inv := p.Invocation
	a := inv.Args
	for _, seq := range [][]string{
		{"--bind", filepath.Join(state, "tmp"), "/tmp"},
		{"--bind", filepath.Join(home, ".claude"), filepath.Join(home, ".claude")},
		{"--perms", "0700", "--dir", filepath.Join(home, ".ssh")},
		{"--ro-bind-try", filepath.Join(home, ".ssh/config"), filepath.Join(home, ".ssh/config")},
		{"--ro-bind-try", filepath.Join(home, ".ssh/known_hosts"), filepath.Join(home, ".ssh/known_hosts")},
		{"--ro-bind-try", filepath.Join(home, ".ssh/id_ed25519.pub"), filepath.Join(home, ".ssh/id_ed25519.pub")},
		{"--ro-bind-try", filepath.Join(home, ".gitconfig"), filepath.Join(home, ".gitconfig")},
		{"--bind", filepath.Join(state, "local"), filepath.Join(home, ".local")},
		{"--bind", filepath.Join(state, "chromium"), filepath.Join(home, ".config/chromium")},
		{"--perms", "0700", "--dir", "/run/user/" + strconv.Itoa(os.Getuid())},
		{"--seccomp"},
		{"--file"},
	} {
		if index(a, seq...) < 0 {
			t.Errorf("missing %v in %v", seq, a)
		}
	}
	for _, private := range []string{"id_ed25519", "id_rsa-work"} {
		if slices.Contains(a, filepath.Join(home, ".ssh", private)) {
			t.Errorf("a private key of ~/.ssh is bound: %s", private)
		}
	}
	if slices.Contains(a, filepath.Join(home, ".ssh")) && index(a, "--dir", filepath.Join(home, ".ssh")) < 0 {
		t.Error("~/.ssh is bound whole")
	}
	if index(a, "--bind", filepath.Join(state, "tmp"), "/tmp") > index(a, "--bind", proj, proj) {
		t.Error("/tmp is bound after the project and would hide a project under /tmp")
	}
	if _, err := os.Lstat(filepath.Join(home, ".claude")); err == nil {
		t.Error("planning created ~/.claude on the host: a plan writes nothing")
	}
	if err := launch.EnsureProjectStateDir(state, proj); err != nil { // what Claim does
		t.Fatal(err)
	}
	if err := launch.PrepareHost(p); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{filepath.Join(home, ".claude"), filepath.Join(state, "tmp"), filepath.Join(state, "local"), filepath.Join(state, "chromium"), filepath.Join(state, "tmux")} {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			t.Errorf("%s was not created on the host by the start", dir)
		}
	}
	for _, arg := range a {
		if strings.Contains(arg, "sk-login") {
			t.Fatal("the ~/.claude.json content is on the command line")
		}
	}
	// seccomp filter, the sandbox's nix.conf, /etc/passwd, /etc/group,
	// the host's machine-id where it has one, ~/.claude.json
	last := inv.Files[len(inv.Files)-1]
	if len(inv.Files) < 5 || last.Data != nil || last.Source != filepath.Join(home, ".claude.json") {
		t.Fatalf("files: %+v", inv.Files)
	}
	if !strings.Contains(string(inv.Files[1].Data), "experimental-features") || strings.Contains(string(inv.Files[1].Data), "substituters") {
		t.Errorf("the sandbox's nix.conf: %q", inv.Files[1].Data)
	}
	if !strings.Contains(string(inv.Files[2].Data), ":x:0:0:root:") || !strings.Contains(string(inv.Files[3].Data), "root:x:0:") {
		t.Errorf("passwd/group: %q %q", inv.Files[2].Data, inv.Files[3].Data)
	}
	// Printable: descriptors renumbered 3, 4 and the arguments with them.
	pr := inv.Printable()
	if got := pr.Args[index(pr.Args, "--seccomp")+1]; got != "3" {
		t.Errorf("--seccomp %s in the printable form", got)
	}
	if got := pr.Args[index(pr.Args, "--file")+1]; got != "4" {
		t.Errorf("--file %s in the printable form", got)
	}
	if !slices.Contains(inv.Env, "PATH="+handManifest().Path[0]+":"+filepath.Join(home, ".local/bin")) {
		t.Errorf("PATH: %v", inv.Env)
	}
}

// TestPlanWritesNothing: deciding a start, as --dry-run does, in a fresh git
// repository for a user with no ~/.claude and no state directory, leaves
// the home, the state directory and the repository exactly as they were.
func TestPlanWritesNothing(t *testing.T) {
	home, stateHome, proj := t.TempDir(), t.TempDir(), t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_STATE_HOME", stateHome)
	os.MkdirAll(filepath.Join(proj, ".git", "objects"), 0o755)
	os.WriteFile(filepath.Join(proj, ".git", "config"), []byte("[core]\n"), 0o644)
	before := tree(t, home, stateHome, proj)
	m := handManifest()
	rt := &launch.Runtime{Project: proj, Home: home, User: "u", Network: true, Protect: true, NixDaemon: true, LookupEnv: env(nil)}
	l := &launch.Launch{Backend: Backend{}, Runtime: rt, Manifest: m, DryRun: true}
	if err := l.Check(); err != nil {
		t.Fatal(err)
	}
	p, err := l.Plan()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Invocation.Close()
	if after := tree(t, home, stateHome, proj); !slices.Equal(before, after) {
		t.Errorf("the plan wrote to the file system:\nbefore %q\nafter  %q", before, after)
	}
	// It still plans what a start makes: ~/.claude's records, .git/hooks
	// and the placeholders of missing protected names.
	for _, seq := range [][]string{
		{"--ro-bind", filepath.Join(home, ".claude"), launch.ClaudeHostView},
		{"--bind", filepath.Join(home, ".claude", "projects"), filepath.Join(home, ".claude", "projects")},
		{"--bind", filepath.Join(home, ".claude", ".credentials.json"), filepath.Join(home, ".claude", ".credentials.json")},
		{"--ro-bind", filepath.Join(proj, ".git", "hooks"), filepath.Join(proj, ".git", "hooks")},
		{"--perms", "0555", "--tmpfs", filepath.Join(proj, ".envrc")},
		{"--perms", "0555", "--tmpfs", filepath.Join(proj, ".git", "modules")},
		{"--bind", filepath.Join(p.StateDir, "tmp"), "/tmp"},
	} {
		if index(p.Invocation.Args, seq...) < 0 {
			t.Errorf("missing %v in %v", seq, p.Invocation.Args)
		}
	}
}

// tree lists every path under roots.
func tree(t *testing.T, roots ...string) []string {
	t.Helper()
	var out []string
	for _, root := range roots {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
			return nil
		})
	}
	return out
}
