// Package bubblewrap is the unprivileged backend: a sandbox made by bwrap
// in user namespaces, as the calling user. It renders the launch core's
// typed plan into bwrap's argument list (rendering order is mount order:
// every tmpfs or directory before what is mounted inside it), executes
// bwrap in place of this process, and joins, stops and describes running
// sandboxes. What crosses into the sandbox is the core's decision, not
// this package's.
package bubblewrap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/seccomp"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// Name is the backend's name.
const Name = "bubblewrap"

// Backend is the bubblewrap backend.
type Backend struct{}

func (Backend) Name() string { return Name }

func (Backend) Traits() launch.Traits {
	return launch.Traits{
		UserNamespaces: true,
		Tmux:           true,
		SecretBroker:   true,
		Protects:       true,
		ListensOnJoin:  true,
		Persistence:    "What persists after the sandbox ends: the project directory, Claude Code's transcripts, history and login in ~/.claude, ~/.local and /tmp (both kept per project). Everything else in the home directory is discarded.",
	}
}

// Check: bwrap needs user namespaces (unless run by root), and would fail
// with a message that does not say what to change.
func (Backend) Check(rt *launch.Runtime) error {
	return launch.CheckUserNamespaces(rt.EffectiveUID())
}

// Plan decides the sandbox's mounts and environment, and renders them.
func (Backend) Plan(p *launch.Plan, m *manifest.Manifest, rt *launch.Runtime) error {
	env, err := launch.SandboxEnv(m, rt)
	if err != nil {
		return err
	}
	host := launch.OSHost(rt)
	fwd := host.Forwards(rt)
	home := rt.Home

	mounts := []launch.Mount{launch.TmpMount(p.StateDir), {Kind: launch.Tmpfs, Dest: "/home"}}
	if !strings.HasPrefix(home, "/home/") {
		mounts = append(mounts, launch.Mount{Kind: launch.Tmpfs, Dest: home})
	}
	mounts = append(mounts,
		launch.Mount{Kind: launch.Dir, Dest: home},
		launch.Mount{Kind: launch.ROBind, Source: manifest.StoreDir, Dest: manifest.StoreDir},
	)
	mounts = append(mounts, launch.HostEtcMounts(m)...)
	nix, nixEnv := launch.NixMounts(p)
	mounts = append(mounts, nix...)
	// Who the user is: ssh, git and `id` ask getpwuid(). Synthesised with
	// the user alone rather than the host's files, which list every account.
	// machine-id: D-Bus clients read it.
	passwd, group := identityFiles(rt)
	mounts = append(mounts,
		launch.Mount{Kind: launch.File, Dest: "/etc/passwd", Data: []byte(passwd), Mode: 0o644},
		launch.Mount{Kind: launch.File, Dest: "/etc/group", Data: []byte(group), Mode: 0o644},
		// A copy, not a bind: bwrap rereads the mount table for each bind,
		// which is most of what a mount costs the launch.
		launch.Mount{Kind: launch.File, Source: "/etc/machine-id", Dest: "/etc/machine-id", Mode: 0o444, Optional: true},
		// nix-ld where prebuilt binaries look for their loader (the
		// closure's platform says where): a link into the read-only store,
		// as NixOS has it.
		launch.Mount{Kind: launch.Symlink, Source: m.NixLd.Loader, Dest: m.NixLd.Path},
		launch.Mount{Kind: launch.Symlink, Source: m.Shell, Dest: "/bin/sh"},
		launch.Mount{Kind: launch.Symlink, Source: m.Shell, Dest: "/bin/bash"},
		launch.Mount{Kind: launch.Symlink, Source: m.UsrBinEnv, Dest: "/usr/bin/env"},
		// The sandbox's own runtime directory, then what the host forwards into it.
		launch.Mount{Kind: launch.Dir, Dest: launch.RuntimeDirInside(host.UID), Mode: 0o700},
	)
	mounts = append(mounts, fwd.Mounts...)
	agent, agentEnv := launch.SSHAgentMounts(p, host.UID)
	mounts = append(mounts, agent...)
	login := launch.ClaudeLoginMounts(p, rt, home)
	trust, secretEnv := launch.SecretMounts(p)
	mounts = append(mounts, trust...)

	realHome, err := os.UserHomeDir()
	user, prepare, protected := launch.UserMounts(m, launch.UserFiles{Home: home, MayCreate: err == nil && filepath.Clean(realHome) == home}, rt)
	mounts = append(mounts, user...)
	mounts = append(mounts, login...)
	mounts = launch.ChromiumTrustMounts(p, m, mounts)
	mounts = launch.ApproveKeyPlaceholder(p, home, mounts)
	state, dirs := launch.StateMounts(p.StateDir, home, nil)
	mounts = append(mounts, state...)
	prepare = append(prepare, dirs...)
	mounts = append(mounts, launch.Mount{Kind: launch.Bind, Source: rt.Project, Dest: rt.Project})
	// The project's protected paths, over its bind.
	covers, dirs, inProject, err := launch.ProjectProtection(rt.Project, rt, nil)
	if err != nil {
		return err
	}
	mounts = append(mounts, covers...)
	prepare = append(prepare, dirs...)
	p.Mounts, p.Prepare, p.Protected = mounts, prepare, append(protected, inProject...)
	p.Env = launch.MergeEnv(env, fwd.Env, nixEnv, agentEnv, secretEnv, launch.ProxyEnv(rt.Egress), map[string]string{
		"PATH": strings.Join(append(append([]string{}, m.Path...), filepath.Join(home, ".local/bin")), ":"),
	})
	inv, err := render(p, m.Bwrap, keeperCommand(m))
	if err != nil {
		return err
	}
	p.Invocation = inv
	return nil
}

// keeperCommand is what bwrap runs: not the session's program (every
// session joins), but coreutils' cat reading the lifetime pipe on its
// standard input, which holds the sandbox open until the supervisor closes
// that pipe (or dies). A program in C: the first session waits for it.
func keeperCommand(m *manifest.Manifest) []string {
	return []string{filepath.Join(filepath.Dir(m.UsrBinEnv), "cat")}
}

// render writes the plan as bwrap's command line, running keeper. Files
// go to bwrap as descriptors; the environment is bwrap's own, never
// arguments. No --die-with-parent: the sandbox outlives the launch that
// started it while other sessions run; its supervisor ends it.
func render(p *launch.Plan, bwrap string, keeper []string) (inv *launch.Invocation, err error) {
	inv = &launch.Invocation{Path: bwrap, Env: p.Env, Args: []string{"bwrap",
		"--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
		"--hostname", "claude-sandbox",
	}}
	defer func() {
		if err != nil {
			inv.Close()
		}
	}()
	// Its own network namespace, whatever the network mode: loopback only,
	// the proxy on it its one way out.
	inv.Args = append(inv.Args, "--unshare-net")
	if os.Geteuid() == 0 {
		// Run by root, bwrap leaves the sandbox root's capabilities: it
		// could unmount what keeps protected paths read-only, and more.
		inv.Args = append(inv.Args, "--cap-drop", "ALL")
	}
	if filter := seccomp.TerminalFilter(); filter != nil {
		if err := inv.AppendFile("--seccomp", "seccomp filter: no TIOCSTI/TIOCLINUX", "", seccomp.Bytes(filter), false); err != nil {
			return nil, err
		}
	}
	inv.Args = append(inv.Args, "--proc", "/proc", "--dev", "/dev")
	for _, mt := range p.Mounts {
		if err := renderMount(inv, mt); err != nil {
			return nil, err
		}
	}
	inv.Args = append(inv.Args, "--chdir", "/", "--")
	inv.Args = append(inv.Args, keeper...)
	inv.Session = p.Command
	return inv, nil
}

func renderMount(inv *launch.Invocation, mt launch.Mount) error {
	try := ""
	if mt.Optional {
		try = "-try"
	}
	perms := func() {
		if mt.Mode != 0 {
			inv.Args = append(inv.Args, "--perms", fmt.Sprintf("%04o", mt.Mode.Perm()))
		}
	}
	switch mt.Kind {
	case launch.Bind:
		inv.Args = append(inv.Args, "--bind"+try, mt.Source, mt.Dest)
	case launch.ROBind:
		inv.Args = append(inv.Args, "--ro-bind"+try, mt.Source, mt.Dest)
	case launch.DevBind:
		inv.Args = append(inv.Args, "--dev-bind"+try, mt.Source, mt.Dest)
	case launch.Tmpfs:
		perms()
		inv.Args = append(inv.Args, "--tmpfs", mt.Dest)
	case launch.Dir:
		perms()
		inv.Args = append(inv.Args, "--dir", mt.Dest)
	case launch.Symlink:
		inv.Args = append(inv.Args, "--symlink", mt.Source, mt.Dest)
	case launch.File:
		data := mt.Data
		if mt.Source != "" {
			var err error
			if data, err = launch.SnapshotFile(mt.Source); err != nil {
				if mt.Optional {
					return nil
				}
				return err
			}
		}
		perms()
		if err := inv.AppendFile("--file", mt.Dest, mt.Source, data, mt.Secret); err != nil {
			return err
		}
		inv.Args = append(inv.Args, mt.Dest)
	default:
		return fmt.Errorf("bwrap cannot place a %s mount at %s", mt.Kind, mt.Dest)
	}
	return nil
}

// identityFiles returns /etc/passwd and /etc/group for the sandbox: root,
// the user (same uid and gid as outside) and nobody.
func identityFiles(rt *launch.Runtime) (passwd, group string) {
	uid, gid := os.Getuid(), os.Getgid()
	groupName := rt.User
	if data, err := os.ReadFile("/etc/group"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Split(line, ":")
			if len(f) >= 3 && f[2] == strconv.Itoa(gid) && f[0] != "" {
				groupName = f[0]
				break
			}
		}
	}
	clean := func(s string) string { // a field must not break the format
		return strings.Map(func(r rune) rune {
			if r == ':' || r == '\n' {
				return '_'
			}
			return r
		}, s)
	}
	passwd = "root:x:0:0:root:/root:/bin/bash\n"
	group = "root:x:0:\n"
	if uid != 0 {
		passwd += fmt.Sprintf("%s:x:%d:%d::%s:/bin/bash\n", clean(rt.User), uid, gid, clean(rt.Home))
	}
	if gid != 0 {
		group += fmt.Sprintf("%s:x:%d:\n", clean(groupName), gid)
	}
	passwd += "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	group += "nogroup:x:65534:\n"
	return passwd, group
}

// Start is not used: a bubblewrap sandbox is spawned for its supervisor.
func (Backend) Start(context.Context, *launch.Plan, *launch.Record) error {
	return errors.New("bubblewrap sandboxes start through Spawn")
}

// Status: the record says all there is.
func (Backend) Status(context.Context, *launch.Record) string { return "" }
