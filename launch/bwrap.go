package launch

import (
	"path/filepath"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// Invocation is a fully decided sandbox start: what to exec, with which
// arguments and environment.
type Invocation struct {
	Path string   `json:"path"`
	Args []string `json:"args"` // argv, Args[0] included
	Env  []string `json:"env"`
}

// Command returns what runs inside the sandbox for this runtime.
func (rt *Runtime) command(m *manifest.Manifest) []string {
	switch {
	case len(rt.Command) > 0:
		return rt.Command
	case rt.Shell:
		return []string{m.Shell, "-l"}
	default:
		return []string{m.Claude}
	}
}

// Bubblewrap builds the bwrap invocation. Mount order matters to bwrap:
// every tmpfs comes before the binds placed inside it, so a project under
// /tmp or /home is laid over the empty tmpfs, not hidden by it.
func Bubblewrap(m *manifest.Manifest, rt *Runtime) (*Invocation, error) {
	env, err := SandboxEnv(m, rt)
	if err != nil {
		return nil, err
	}
	a := []string{"bwrap",
		"--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
		"--hostname", "claude-sandbox",
		"--die-with-parent",
		"--proc", "/proc",
		"--dev", "/dev",
		"--tmpfs", "/tmp",
		"--tmpfs", "/home",
	}
	if !rt.Network {
		a = append(a, "--unshare-net")
	}
	if !strings.HasPrefix(rt.Home, "/home/") {
		a = append(a, "--tmpfs", rt.Home)
	}
	a = append(a, "--dir", rt.Home)
	a = append(a, "--ro-bind", manifest.StoreDir, manifest.StoreDir)
	for _, name := range m.HostEtc {
		host := filepath.Join("/etc", name)
		a = append(a, "--ro-bind-try", host, host)
	}
	a = append(a,
		"--ro-bind", m.NixLd.Loader, "/lib64/ld-linux-x86-64.so.2",
		"--symlink", m.Shell, "/bin/sh",
		"--symlink", m.Shell, "/bin/bash",
		"--symlink", m.UsrBinEnv, "/usr/bin/env",
		"--bind", rt.Project, rt.Project,
		"--chdir", rt.Project,
		"--",
	)
	a = append(a, rt.command(m)...)
	return &Invocation{Path: m.Bwrap, Args: a, Env: env}, nil
}
