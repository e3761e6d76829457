package launch

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeHost is a host with the given sockets, directories and files.
func fakeHost(vars map[string]string, sockets, dirs, files []string) hostView {
	kinds := map[string]fs.FileMode{}
	for _, p := range sockets {
		kinds[p] = fs.ModeSocket
	}
	for _, p := range dirs {
		kinds[p] = fs.ModeDir
	}
	for _, p := range files {
		kinds[p] = 0
	}
	return hostView{
		lookupEnv: env(vars),
		stat: func(p string) (fs.FileInfo, error) {
			if mode, ok := kinds[p]; ok {
				return fakeInfo{name: filepath.Base(p), mode: mode}, nil
			}
			return nil, fs.ErrNotExist
		},
		uid: 1000,
	}
}

type fakeInfo struct {
	name string
	mode fs.FileMode
}

func (f fakeInfo) Name() string       { return f.name }
func (f fakeInfo) Size() int64        { return 0 }
func (f fakeInfo) Mode() fs.FileMode  { return f.mode }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return f.mode.IsDir() }
func (f fakeInfo) Sys() any           { return nil }

func TestHostForwardsEverythingPresent(t *testing.T) {
	h := fakeHost(map[string]string{
		"DISPLAY": ":3", "XAUTHORITY": "/home/u/.Xauth", "WAYLAND_DISPLAY": "wayland-1",
		"XDG_RUNTIME_DIR": "/run/user/1000", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus,guid=abc",
		"SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1", "GNOME_KEYRING_CONTROL": "/run/user/1000/keyring", "XDG_SESSION_TYPE": "wayland",
	}, []string{
		"/tmp/.X11-unix/X3", "/run/user/1000/wayland-1", "/run/user/1000/bus", "/run/dbus/system_bus_socket",
		"/run/user/1000/pulse/native", "/run/user/1000/pipewire-0", "/tmp/ssh-x/agent.1", "/nix/var/nix/daemon-socket/socket",
	}, []string{"/run/user/1000", "/run/user/1000/keyring", "/dev/dri"}, []string{"/home/u/.Xauth", "/run/opengl-driver"})
	f := hostForwards(h, &Runtime{Home: "/home/u", Network: true, NixDaemon: true})
	want := map[string]string{
		"DISPLAY": ":3", "XAUTHORITY": "/run/user/1000/Xauthority", "WAYLAND_DISPLAY": "wayland-1",
		"XDG_RUNTIME_DIR": "/run/user/1000", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus",
		"PULSE_SERVER": "unix:/run/user/1000/pulse/native", "PIPEWIRE_REMOTE": "/run/user/1000/pipewire-0",
		"SSH_AUTH_SOCK": "/run/user/1000/ssh-agent", "NIX_REMOTE": "daemon", "GNOME_KEYRING_CONTROL": "/run/user/1000/keyring",
		"XDG_SESSION_TYPE": "wayland",
	}
	for k, v := range want {
		if f.env[k] != v {
			t.Errorf("%s = %q, want %q", k, f.env[k], v)
		}
	}
	for _, seq := range [][]string{
		{"--tmpfs", "/tmp/.X11-unix"},
		{"--ro-bind-try", "/tmp/.X11-unix/X3", "/tmp/.X11-unix/X3"},
		{"--ro-bind-try", "/run/user/1000/wayland-1", "/run/user/1000/wayland-1"},
		{"--ro-bind-try", "/run/dbus/system_bus_socket", "/run/dbus/system_bus_socket"},
		{"--ro-bind-try", "/tmp/ssh-x/agent.1", "/run/user/1000/ssh-agent"},
		{"--ro-bind-try", "/nix/var/nix/daemon-socket/socket", "/nix/var/nix/daemon-socket/socket"},
		{"--dev-bind-try", "/dev/dri", "/dev/dri"},
		{"--ro-bind-try", "/run/opengl-driver", "/run/opengl-driver"},
		{"--ro-bind-try", "/run/user/1000/keyring", "/run/user/1000/keyring"},
	} {
		if index(f.args, seq...) < 0 {
			t.Errorf("missing %v in %v", seq, f.args)
		}
	}

	// --no-desktop keeps only the agent and the daemon; --no-nix-daemon drops that.
	f = hostForwards(h, &Runtime{Home: "/home/u", NoDesktop: true})
	if f.env["DISPLAY"] != "" || f.env["NIX_REMOTE"] != "" || f.env["SSH_AUTH_SOCK"] == "" {
		t.Errorf("--no-desktop --no-nix-daemon: %v", f.env)
	}
}

func TestHostForwardsSkipsWhatIsAbsent(t *testing.T) {
	// Variables naming sockets that do not exist, and no runtime directory.
	h := fakeHost(map[string]string{
		"DISPLAY": ":9", "WAYLAND_DISPLAY": "wayland-0", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nope",
		"SSH_AUTH_SOCK": "/nope", "PULSE_SERVER": "unix:/nope",
	}, nil, nil, nil)
	f := hostForwards(h, &Runtime{Home: "/home/u", Network: true, NixDaemon: true})
	if len(f.args) != 0 {
		t.Errorf("mounts for absent resources: %v", f.args)
	}
	if len(f.env) != 1 || f.env["XDG_RUNTIME_DIR"] == "" {
		t.Errorf("variables for absent resources: %v", f.env)
	}
}

func TestHostForwardsTCPAndAbstractOnlyWithNetwork(t *testing.T) {
	h := fakeHost(map[string]string{"DISPLAY": "localhost:10.0", "DBUS_SESSION_BUS_ADDRESS": "unix:abstract=/tmp/dbus-x"}, nil, nil, nil)
	on := hostForwards(h, &Runtime{Network: true})
	off := hostForwards(h, &Runtime{Network: false})
	if on.env["DISPLAY"] != "localhost:10.0" || on.env["DBUS_SESSION_BUS_ADDRESS"] == "" {
		t.Errorf("network on: %v", on.env)
	}
	if off.env["DISPLAY"] != "" || off.env["DBUS_SESSION_BUS_ADDRESS"] != "" {
		t.Errorf("network off, yet a TCP display or abstract bus is set: %v", off.env)
	}
}

func TestX11AndDBusAddresses(t *testing.T) {
	for in, want := range map[string][2]any{
		":0": {"0", true}, "unix:1.0": {"1", true}, "localhost:10.0": {"10", false}, "x": {"", false}, ":a": {"", false},
	} {
		n, local := x11Display(in)
		if n != want[0] || local != want[1] {
			t.Errorf("x11Display(%q) = %q %v", in, n, local)
		}
	}
	if p, _ := dbusUnixAddress("tcp:host=x;unix:path=/run/a%20b/bus,guid=1"); p != "/run/a b/bus" {
		t.Errorf("dbus path = %q", p)
	}
	if _, abstract := dbusUnixAddress("unix:abstract=/tmp/x,guid=1"); !abstract {
		t.Error("abstract address not recognised")
	}
}

func TestProtectGit(t *testing.T) {
	p := t.TempDir()
	if got := protectGit(p); got != nil {
		t.Errorf("no .git: %v", got)
	}
	git := filepath.Join(p, ".git")
	os.Mkdir(git, 0o755)
	os.WriteFile(filepath.Join(git, "config"), nil, 0o644)
	got := protectGit(p)
	for _, seq := range [][]string{
		{"--bind", git, git},
		{"--ro-bind", git + "/config", git + "/config"},
		{"--ro-bind", git + "/hooks", git + "/hooks"},
	} {
		if index(got, seq...) < 0 {
			t.Errorf("missing %v in %v", seq, got)
		}
	}
	if st, err := os.Stat(filepath.Join(git, "hooks")); err != nil || !st.IsDir() {
		t.Error("a missing hooks directory was not created")
	}
	if index(got, "--bind", git, git) > index(got, "--ro-bind", git+"/config", git+"/config") {
		t.Error(".git must be bound before the read-only binds inside it")
	}

	wt := t.TempDir()
	os.WriteFile(filepath.Join(wt, ".git"), []byte("gitdir: /elsewhere\n"), 0o644)
	if got := protectGit(wt); !slices.Equal(got, []string{"--ro-bind", wt + "/.git", wt + "/.git"}) {
		t.Errorf("worktree .git file: %v", got)
	}
}

func TestBubblewrapFullSandbox(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	home := t.TempDir()
	t.Setenv("HOME", home) // the user's own home: ~/.claude is made there
	os.WriteFile(filepath.Join(home, ".claude.json"), []byte(`{"secret":"sk-login"}`), 0o600)
	proj := t.TempDir()
	state, err := ProjectStateDir(proj)
	if err != nil {
		t.Fatal(err)
	}
	rt := &Runtime{Project: proj, Home: home, User: "u", Network: true, StateDir: state, LookupEnv: env(nil)}
	inv, err := Bubblewrap(handManifest(), rt)
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	a := inv.Args
	for _, seq := range [][]string{
		{"--bind", filepath.Join(state, "tmp"), "/tmp"},
		{"--bind", filepath.Join(home, ".claude"), filepath.Join(home, ".claude")},
		{"--ro-bind-try", filepath.Join(home, ".ssh"), filepath.Join(home, ".ssh")},
		{"--ro-bind-try", filepath.Join(home, ".gitconfig"), filepath.Join(home, ".gitconfig")},
		{"--bind", filepath.Join(state, "local"), filepath.Join(home, ".local")},
		{"--bind", filepath.Join(state, "chromium"), filepath.Join(home, ".config/chromium")},
		{"--seccomp"},
		{"--file"},
	} {
		if index(a, seq...) < 0 {
			t.Errorf("missing %v in %v", seq, a)
		}
	}
	if index(a, "--bind", filepath.Join(state, "tmp"), "/tmp") > index(a, "--bind", proj, proj) {
		t.Error("/tmp is bound after the project and would hide a project under /tmp")
	}
	if st, err := os.Stat(filepath.Join(home, ".claude")); err != nil || !st.IsDir() {
		t.Error("~/.claude was not created on the host")
	}
	for _, arg := range a {
		if strings.Contains(arg, "sk-login") {
			t.Fatal("the ~/.claude.json content is on the command line")
		}
	}
	// seccomp filter, /etc/passwd, /etc/group, ~/.claude.json
	if len(inv.Files) != 4 || inv.Files[3].Data != nil || inv.Files[3].Source != filepath.Join(home, ".claude.json") {
		t.Fatalf("files: %+v", inv.Files)
	}
	if !strings.Contains(string(inv.Files[1].Data), ":x:0:0:root:") || !strings.Contains(string(inv.Files[2].Data), "root:x:0:") {
		t.Errorf("passwd/group: %q %q", inv.Files[1].Data, inv.Files[2].Data)
	}
	// Portable: descriptors renumbered 3, 4 and the arguments with them.
	p := inv.Portable()
	if got := p.Args[index(p.Args, "--seccomp")+1]; got != "3" {
		t.Errorf("--seccomp %s in the portable form", got)
	}
	if got := p.Args[index(p.Args, "--file")+1]; got != "4" {
		t.Errorf("--file %s in the portable form", got)
	}
	if !slices.Contains(inv.Env, "PATH="+handManifest().Path[0]+":"+filepath.Join(home, ".local/bin")) {
		t.Errorf("PATH: %v", inv.Env)
	}
}

func TestConfigOfSeparatesWhatShapesTheSandbox(t *testing.T) {
	base := Runtime{Project: "/p", Home: "/home/u", Network: true, ProtectGit: true, NixDaemon: true}
	same := base
	same.Shell, same.Command, same.Tmux = true, []string{"x"}, true
	if ConfigOf("bubblewrap", "/nix/store/a", &base) != ConfigOf("bubblewrap", "/nix/store/a", &same) {
		t.Error("the program run inside changed the configuration")
	}
	for name, change := range map[string]func(*Runtime){
		"network":     func(r *Runtime) { r.Network = false },
		"protect-git": func(r *Runtime) { r.ProtectGit = false },
		"env":         func(r *Runtime) { r.ExtraEnv = []string{"X"} },
		"gh-token":    func(r *Runtime) { r.GHToken = true },
		"desktop":     func(r *Runtime) { r.NoDesktop = true },
	} {
		r := base
		change(&r)
		if ConfigOf("bubblewrap", "/nix/store/a", &base) == ConfigOf("bubblewrap", "/nix/store/a", &r) {
			t.Errorf("%s does not change the configuration", name)
		}
	}
	if ConfigOf("bubblewrap", "/nix/store/a", &base) == ConfigOf("bubblewrap", "/nix/store/b", &base) {
		t.Error("the closure does not change the configuration")
	}
}

func TestExecvpCandidates(t *testing.T) {
	if got := execvpCandidates("bash", "/a/bin::/b"); !slices.Equal(got, []string{"/a/bin/bash", "./bash", "/b/bash"}) {
		t.Errorf("got %v", got)
	}
	if got := execvpCandidates("./x", "/a"); !slices.Equal(got, []string{"./x"}) {
		t.Errorf("got %v", got)
	}
}

func TestSandboxEnvGHTokenOnlyOnRequest(t *testing.T) {
	host := map[string]string{"GH_TOKEN": "a", "GITHUB_TOKEN": "b"}
	rt := &Runtime{Home: "/home/u", User: "u", LookupEnv: env(host)}
	got, _ := SandboxEnv(handManifest(), rt)
	if slices.Contains(got, "GH_TOKEN=a") || slices.Contains(got, "GITHUB_TOKEN=b") {
		t.Error("a GitHub token crossed without --gh-token")
	}
	rt.GHToken = true
	got, _ = SandboxEnv(handManifest(), rt)
	if !slices.Contains(got, "GH_TOKEN=a") || !slices.Contains(got, "GITHUB_TOKEN=b") {
		t.Error("--gh-token did not pass the tokens")
	}
}
