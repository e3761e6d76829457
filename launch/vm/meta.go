package vm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/agent"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// The metadata share: how the host tells the guest about the run. It is
// a read-only 9p share of a directory in the run directory (0700, files
// 0600, the calling user's: what the guest is told of the user — its
// secrets as placeholders only, the real values staying with the
// supervisor — is not for other host users, nor for QEMU's command line):
//
//	run.json               the agent's configuration (agent.Config)
//	claude-sandbox-agent   this binary, which the guest runs as its agent
//	claude.json gitconfig  copies of the host files (never bound)
//	ssh/                   copies of ~/.ssh's config, known_hosts and *.pub
//	trust/ chromium/       the sandbox CA's trust files and Chromium policy,
//	                       written by the supervisor before the guest boots
//	claude-credentials.json  Claude Code's login with placeholders (idem)
//
// The guest reads it as data only: nothing in it is sourced or evaluated.

// At most 31 bytes, checked apart: see manifest/vm.go's mountTag.
var guestUserName = lazyregexp.New(`^[a-z_][a-z0-9_-]*$`)

// guestIdentity is who the command runs as in the guest: the calling
// user's uid and gid, so the project's files (shared with their host
// owners) are writable there; the name only if /etc/passwd can hold it.
func guestIdentity(rt *launch.Runtime) (user string, uid, gid int, home string) {
	user, home = rt.User, rt.Home
	if len(user) > 31 || !guestUserName.MatchString(user) {
		user = "user"
	}
	if strings.ContainsAny(home, ":\n") || !filepath.IsAbs(home) {
		home = "/home/" + user
	}
	return user, os.Getuid(), os.Getgid(), home
}

// guestProtection renders the core's protection mounts (host paths, as
// every backend gets them) on the guest's paths: the project is at its
// host path, the host's ~/.claude is the "claude" share, the home is the
// guest user's. A mount the guest cannot render from its shares is an
// error, never a protection silently dropped.
func (p *vmPlan) guestProtection(mounts []launch.Mount) ([]agent.Protect, error) {
	claude := p.Sources["claude"]
	if !p.Present["claude"] {
		claude = ""
	}
	hostClaude := filepath.Join(p.HostHome, ".claude")
	under := func(path, dir string) (string, bool) {
		if dir == "" {
			return "", false
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			return "", false
		}
		return rel, true
	}
	// source maps a host path the guest reads from.
	source := func(path string) (string, bool) {
		if _, ok := under(path, p.Project); ok {
			return path, true
		}
		for _, dir := range []string{hostClaude, claude} {
			if rel, ok := under(path, dir); ok && claude != "" {
				return filepath.Join(agent.Mnt, "claude", rel), true
			}
		}
		return "", false
	}
	// dest maps a path inside: the project's and the guest's own places
	// stay, the host home's become the guest user's.
	dest := func(path string) string {
		if _, ok := under(path, p.Project); ok {
			return path
		}
		if rel, ok := under(path, p.HostHome); ok {
			return filepath.Join(p.Home, rel)
		}
		return path
	}
	var out []agent.Protect
	for _, m := range mounts {
		g := agent.Protect{Path: dest(m.Dest), Mode: uint32(m.Mode.Perm())}
		switch m.Kind {
		case launch.ROBind, launch.Bind:
			g.Kind = agent.ProtectReadOnly
			if m.Kind == launch.Bind {
				g.Kind = agent.ProtectBind
			}
			src, ok := source(m.Source)
			if !ok {
				return nil, launch.NewVMStartError("cannot protect "+m.Dest+" in the guest: "+m.Source+" is on no share", "")
			}
			if src != g.Path {
				g.Source = src
			}
		case launch.Tmpfs:
			g.Kind = agent.ProtectTmpfs
		case launch.Dir:
			g.Kind = agent.ProtectDir
		case launch.Symlink:
			g.Kind, g.Source = agent.ProtectSymlink, dest(m.Source)
		default:
			return nil, launch.NewVMStartError("cannot protect "+m.Dest+" in the guest: a "+m.Kind.String()+" mount", "")
		}
		out = append(out, g)
	}
	return out, nil
}

// agentConfig is what the guest agent is told about the run.
func (p *vmPlan) agentConfig(env []string) *agent.Config {
	c := &agent.Config{
		User: p.User, UID: p.UID, GID: p.GID, Home: p.Home, Project: p.Project,
		Shell: p.Shell, UsrBinEnv: p.UsrBinEnv, FS: p.FS, VFSTag: p.VFSTag, Env: env,
	}
	covered := map[string]bool{}
	for _, m := range p.guestProtect {
		covered[m.Path] = true
	}
	for source, target := range map[string]string{"claude": ".claude", "git": ".config/git", "gh": ".config/gh"} {
		// A share the protection renders itself (~/.claude as the core
		// decides it) is not bound whole.
		if p.Present[source] && !covered[filepath.Join(p.Home, target)] {
			c.Binds = append(c.Binds, agent.Bind{Share: source, Target: filepath.Join(p.Home, target)})
		}
	}
	// ~/.local persists per project, in the host's state directory.
	c.Binds = append(c.Binds, agent.Bind{Share: "state/" + launch.StateLocal, Target: filepath.Join(p.Home, ".local")})
	c.Copies = []agent.Copy{
		{Name: "claude.json", Target: filepath.Join(p.Home, ".claude.json")},
		{Name: "gitconfig", Target: filepath.Join(p.Home, ".gitconfig")},
	}
	c.Protect = p.guestProtect
	if p.Network {
		c.Proxy = ProxyAddr
	}
	if p.SSHAgent != "" {
		c.SSHAgent = sshAgentInside(p.UID)
	}
	c.Trust, c.Login = p.Trust, p.Login
	return c
}

// writeMeta fills the metadata directory: the agent's configuration, the
// copies of host files, and the agent itself.
func (p *vmPlan) writeMeta(env []string) error {
	dir := filepath.Join(p.RunDir, vmMetaDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	c := p.agentConfig(env)
	for _, cp := range []struct{ name, host string }{{"claude.json", ".claude.json"}, {"gitconfig", ".gitconfig"}} {
		data, ok, err := copyIfPresent(filepath.Join(p.HostHome, cp.host))
		if err != nil {
			return err
		}
		if cp.name == "claude.json" && p.ClaudeJSON != nil {
			data, ok = p.ClaudeJSON, true
		}
		if ok {
			if err := writePrivate(filepath.Join(dir, cp.name), data); err != nil {
				return err
			}
		}
	}
	ok, err := copySSH(filepath.Join(p.HostHome, ".ssh"), filepath.Join(dir, agent.SSHDir))
	if err != nil {
		return err
	}
	c.SSH = ok
	// Filled by the supervisor before it starts the guest (the CA is its
	// own); they must exist when it does.
	if p.Trust {
		for _, d := range []string{agent.TrustDir, agent.ChromiumDir} {
			if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
				return err
			}
		}
	}
	if len(p.Login) > 0 {
		if err := writePrivate(filepath.Join(dir, agent.LoginFile), nil); err != nil {
			return err
		}
	}
	if err := agent.WriteConfig(dir, c); err != nil {
		return err
	}
	return placeAgent(filepath.Join(dir, agent.Binary))
}

// copySSH copies what the guest may see of ~/.ssh, the core's selection
// (launch.SSHVisible: config, known_hosts and public keys). Private keys
// stay on the host; git over SSH signs through the filtered agent.
func copySSH(from, to string) (bool, error) {
	entries, err := os.ReadDir(from)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := os.Mkdir(to, 0o700); err != nil {
		return false, err
	}
	for _, e := range entries {
		name := e.Name()
		if !launch.SSHVisible(name) {
			continue
		}
		data, ok, err := copyIfPresent(filepath.Join(from, name))
		if err != nil || !ok {
			continue
		}
		if err := writePrivate(filepath.Join(to, name), data); err != nil {
			return false, err
		}
	}
	return true, nil
}

// placeAgent puts this binary where the guest runs it: a hard link when
// it can (same file system, no copy), else a copy. The binary is static
// (the container's init is the same binary, for the same reason).
func placeAgent(dst string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if real, err := filepath.EvalSymlinks(self); err == nil {
		self = real
	}
	if err := os.Link(self, dst); err == nil {
		return nil
	}
	in, err := os.Open(self)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o500)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func writePrivate(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// maxCopied bounds a host file copied into the guest (~/.claude.json grows
// with history, but not without bound).
const maxCopied = 16 << 20

// copyIfPresent reads a host file for the metadata share; a missing file is
// no error.
func copyIfPresent(path string) ([]byte, bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return nil, false, nil
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCopied+1))
	if err != nil {
		return nil, false, err
	}
	if len(data) > maxCopied {
		return nil, false, fmt.Errorf("%s is larger than %d MiB", path, maxCopied>>20)
	}
	return data, true, nil
}

// guestEnv is the command's environment: the same allowlist as every
// backend (launch.SandboxEnv), with the guest's own paths.
func guestEnv(m *manifest.Manifest, rt *launch.Runtime, home, user string) ([]string, error) {
	env, err := launch.SandboxEnv(m, rt)
	if err != nil {
		return nil, err
	}
	out := env[:0]
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		switch {
		case (name == "NIX_LD" || name == "NIX_LD_LIBRARY_PATH") && value == "":
			continue
		case name == "HOME":
			kv = "HOME=" + home
		case name == "USER" || name == "LOGNAME":
			kv = name + "=" + user
		}
		out = append(out, kv)
	}
	return out, nil
}
