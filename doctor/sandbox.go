package doctor

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// cachedManifest is the manifest of the most recently used cached closure
// of a backend: its programs (bwrap, QEMU, the guest kernel) are the ones
// a launch would use.
func cachedManifest(env *Env, backend string) (*manifest.Manifest, string) {
	entries, err := closure.Entries(env.Dirs)
	if err != nil {
		return nil, ""
	}
	var best *closure.ListedEntry
	for i := range entries {
		e := &entries[i]
		if e.Backend == backend && (best == nil || e.LastUsed.After(best.LastUsed)) {
			best = e
		}
	}
	if best == nil {
		return nil, ""
	}
	m, err := manifest.Load(best.OutPath)
	if err != nil {
		return nil, ""
	}
	return m, best.OutPath
}

func checkBwrap(ctx context.Context, env *Env) Check {
	c := Check{ID: "userns", Title: "user namespaces (bwrap)", NeededBy: []string{"bubblewrap"}}
	bwrap, from := "", ""
	if m, _ := cachedManifest(env, "bubblewrap"); m != nil && m.Bwrap != "" {
		bwrap, from = m.Bwrap, "the cached sandbox's"
	} else if p, err := exec.LookPath("bwrap"); err == nil {
		bwrap, from = p, "the host's"
	}
	if bwrap == "" {
		c.Status, c.NeededBy = Warn, nil
		c.Detail = "not tried: no bwrap yet (the first build brings it from nixpkgs)"
		c.Fix = "run claude-sandbox doctor again after the first launch, or install bubblewrap to try now"
		return c
	}
	// What a launch asks of the kernel: new pid, ipc and uts namespaces
	// (and, unprivileged, the user namespace bwrap creates for them).
	_, errLine, err := runProgram(ctx, 10*time.Second, []string{"PATH=/usr/bin:/bin"}, bwrap,
		"--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
		"--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", "/bin/sh", "-c", "exit 0")
	if err != nil {
		c.Status = Fail
		c.Detail = fmt.Sprintf("%s bwrap (%s) could not start a sandbox: %s", from, bwrap, firstNonEmpty(errLine, err.Error()))
		c.Fix = "allow unprivileged user namespaces (see the next line); inside a container, run it with nested user namespaces allowed"
		var une *launch.UserNamespaceError
		if err := launch.CheckUserNamespaces(env.EUID); errors.As(err, &une) {
			c.Fix = une.Fix
		}
		return c
	}
	how := "unprivileged"
	if env.EUID == 0 {
		how = "as root (no user namespace needed)"
	}
	c.Status, c.Detail = OK, fmt.Sprintf("a tiny sandbox started %s with %s bwrap (%s)", how, from, bwrap)
	return c
}

func checkUserNSLimits(_ context.Context, env *Env) Check {
	c := Check{ID: "userns-limits", Title: "user namespace limits"}
	var parts []string
	if v, ok := launch.Sysctl("user/max_user_namespaces"); ok {
		parts = append(parts, "user.max_user_namespaces = "+v)
	}
	if v, ok := launch.Sysctl("kernel/unprivileged_userns_clone"); ok {
		parts = append(parts, "kernel.unprivileged_userns_clone = "+v)
	}
	if v, ok := launch.Sysctl("kernel/apparmor_restrict_unprivileged_userns"); ok {
		parts = append(parts, "AppArmor restriction (kernel.apparmor_restrict_unprivileged_userns) = "+v)
	} else {
		parts = append(parts, "no AppArmor user-namespace restriction")
	}
	c.Detail = strings.Join(parts, ", ")
	var une *launch.UserNamespaceError
	if err := launch.CheckUserNamespaces(env.EUID); errors.As(err, &une) {
		c.Status, c.NeededBy, c.Fix = Fail, []string{"bubblewrap"}, une.Fix
		c.Detail = une.Reason + "; " + c.Detail
		return c
	}
	c.Status = OK
	if env.EUID == 0 {
		c.Detail += " (root needs none)"
	}
	return c
}

func checkNspawn(ctx context.Context, _ *Env) Check {
	c := Check{ID: "nspawn", Title: "systemd-nspawn", NeededBy: []string{"container"}}
	p, err := launch.FindNspawn()
	if err != nil {
		c.Status, c.Detail = Fail, "not installed"
		c.Fix = "install it (Debian/Ubuntu: apt-get install systemd-container; NixOS: it is part of systemd)"
		return c
	}
	out, _, err := runProgram(ctx, 10*time.Second, nil, p, "--version")
	version := strings.SplitN(out, "\n", 2)[0]
	if err != nil || version == "" {
		version = "version unknown"
	}
	c.Status, c.Detail = OK, fmt.Sprintf("%s (%s)", version, p)
	return c
}

func checkRoot(_ context.Context, env *Env) Check {
	c := Check{ID: "root", Title: "root for the container backend"}
	if env.EUID == 0 {
		c.Status, c.Detail = OK, "running as root"
		return c
	}
	if _, err := exec.LookPath("sudo"); err == nil {
		c.Status = Warn
		c.Detail = "not root: the container backend re-runs itself through sudo when asked"
		c.Fix = "launch with --backend container --sudo (or sudo claude-sandbox …)"
		return c
	}
	c.Status, c.NeededBy = Fail, []string{"container"}
	c.Detail = "not root, and no sudo: systemd-nspawn needs root"
	c.Fix = "run claude-sandbox as root for the container backend, or use the bubblewrap or vm backend"
	return c
}
