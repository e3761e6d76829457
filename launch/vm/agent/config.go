// Package agent is the VM guest's agent: this same claude-sandbox binary,
// shared into the guest on the run's read-only metadata share and started
// by the guest's init as root. It sets the guest up for the run (the
// user, the home entries, the project mount, the protected paths) from
// the metadata the launcher wrote, then serves the host's supervisor over
// one virtio-serial port multiplexed with yamux: sessions (a command as
// the user, on a terminal or pipes, with its exit status), and, the other
// way, the doors the supervisor keeps (the egress proxy on 127.0.0.1, the
// filtering SSH agent on a Unix socket).
//
// It decides nothing about what crosses into the guest (the launcher
// did, in the metadata) nor who may connect (the supervisor does).
package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Paths in the guest, shared with the NixOS side (templates/vm.nix).
const (
	// Mnt is where the host's shares are mounted.
	Mnt = "/mnt/claude-sandbox"
	// MetaDir is the run's read-only metadata share.
	MetaDir = Mnt + "/meta"
	// Path is where this binary is in the guest: started under this
	// name, it is the agent (launch/backends dispatches on it).
	Path = MetaDir + "/" + Binary
	// Binary is the agent's file name in the metadata share.
	Binary = "claude-sandbox-agent"
	// ConfigFile is the run's configuration in the metadata share.
	ConfigFile = "run.json"
	// SSHDir holds the copies of ~/.ssh the guest may see.
	SSHDir = "ssh"
	// TrustDir, in the metadata share, holds the files that make the
	// guest's clients trust the sandbox's CA (written by the supervisor
	// before the guest boots); TrustInside is where the guest finds them
	// (launch.TrustDirInside, every backend's place).
	TrustDir    = "trust"
	TrustInside = "/run/claude-sandbox/trust"
	// ChromiumDir, in the metadata share, holds Chromium's policy that
	// trusts the CA; ChromiumPolicies is where Chromium reads it.
	ChromiumDir      = "chromium"
	ChromiumPolicies = "/etc/chromium/policies/managed"
	// LoginFile, in the metadata share, is Claude Code's login with
	// placeholders for its tokens (the supervisor writes it).
	LoginFile = "claude-credentials.json"
	// PortName is the virtio-serial port the supervisor listens behind.
	PortName = "org.claude-sandbox.agent"
)

// Stream kinds the agent opens towards the supervisor: the first line of
// each stream names it. Streams the supervisor opens are sessions.
const (
	StreamReady    = "ready"
	StreamProxy    = "proxy"
	StreamSSHAgent = "ssh-agent"
)

// Config is what the launcher tells the agent about this run (run.json in
// the metadata share, 0600: the user's environment, secrets as placeholders).
type Config struct {
	User    string `json:"user"`
	UID     int    `json:"uid"`
	GID     int    `json:"gid"`
	Home    string `json:"home"`
	Project string `json:"project"`
	Shell   string `json:"shell"`
	// UsrBinEnv is linked at /usr/bin/env (shebangs).
	UsrBinEnv string `json:"usrBinEnv"`
	// FS is how the project arrives: "9p" (a share at Mnt/project) or
	// "virtiofs" (VFSTag).
	FS     string `json:"fs"`
	VFSTag string `json:"vfsTag,omitempty"`
	// Binds are share directories (relative to Mnt) placed in the home.
	Binds []Bind `json:"binds,omitempty"`
	// Copies are files of the metadata share copied into the home (never
	// bound: Claude Code replaces ~/.claude.json by rename).
	Copies []Copy `json:"copies,omitempty"`
	// SSH: the metadata share's ssh/ (config, known_hosts, *.pub) is
	// ~/.ssh, read-only.
	SSH bool `json:"ssh,omitempty"`
	// Protect are the launch core's protection mounts (launch.Mount,
	// rendered by the launcher onto guest paths), in order: what the
	// sandbox sees but cannot change on the host.
	Protect []Protect `json:"protect,omitempty"`
	// Env is the sandbox's environment: sessions without their own run
	// with it.
	Env []string `json:"env"`
	// Proxy is the address the egress proxy is offered on inside ("":
	// no proxy, no network at all).
	Proxy string `json:"proxy,omitempty"`
	// SSHAgent is the socket the filtering SSH agent is offered on ("":
	// none).
	SSHAgent string `json:"sshAgent,omitempty"`
	// Trust: the metadata share's TrustDir is TrustInside, read-only, and
	// Chromium's managed policies gain ChromiumDir's.
	Trust bool `json:"trust,omitempty"`
	// Login are the paths (Claude Code's credentials file, in the home and
	// on the share it comes from) over which a guest copy of LoginFile is
	// bound: the host's file, with its real tokens, is never visible.
	Login []string `json:"login,omitempty"`
}

// Bind places a share directory in the home.
type Bind struct {
	Share  string `json:"share"`  // directory under Mnt
	Target string `json:"target"` // absolute path in the guest
}

// Copy copies a file of the metadata share.
type Copy struct {
	Name   string `json:"name"`   // file in the metadata share
	Target string `json:"target"` // absolute path in the guest
}

// Protect is one mount of the protection, on guest paths.
type Protect struct {
	Kind string `json:"kind"` // Protect* below
	// Source: what a bind shows at Path (a guest path, "" for Path
	// itself); a symlink's target.
	Source string `json:"source,omitempty"`
	Path   string `json:"path"`
	Mode   uint32 `json:"mode,omitempty"` // tmpfs, dir: the permissions
}

// Protection mount kinds: launch.MountKind's, as the guest renders them.
const (
	ProtectReadOnly = "ro-bind" // read-only
	ProtectBind     = "bind"    // read-write (a mount point: it cannot be renamed or removed)
	ProtectTmpfs    = "tmpfs"   // an empty directory of the guest's own (a placeholder)
	ProtectDir      = "dir"     // an empty directory of the user's, in the guest's memory
	ProtectSymlink  = "symlink" // a link to Source
)

// WriteConfig writes c into the metadata directory dir (0600).
func WriteConfig(dir string, c *Config) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, ConfigFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// maxConfig bounds run.json (the environment and a few paths).
const maxConfig = 4 << 20

func readConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var c Config
	dec := json.NewDecoder(&limited{f, maxConfig})
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, c.check()
}

// check refuses what must never reach a mount or /etc/passwd.
func (c *Config) check() error {
	abs := func(p string) bool {
		return filepath.IsAbs(p) && filepath.Clean(p) == p && !strings.ContainsAny(p, "\x00\n:")
	}
	switch {
	case c.UID < 0 || c.GID < 0:
		return errors.New("bad uid or gid")
	case !abs(c.Home) || !abs(c.Project):
		return errors.New("bad home or project path")
	case c.User == "" || strings.ContainsAny(c.User, ":\n/"):
		return errors.New("bad user name")
	}
	for _, b := range c.Binds {
		if !abs(b.Target) || strings.Contains(b.Share, "..") || strings.HasPrefix(b.Share, "/") {
			return fmt.Errorf("bad bind %q → %q", b.Share, b.Target)
		}
	}
	for _, cp := range c.Copies {
		if !abs(cp.Target) || strings.ContainsAny(cp.Name, "/\x00") {
			return fmt.Errorf("bad copy %q → %q", cp.Name, cp.Target)
		}
	}
	for _, p := range c.Login {
		if !abs(p) {
			return fmt.Errorf("bad login path %q", p)
		}
	}
	for _, p := range c.Protect {
		ok := abs(p.Path) && (p.Source == "" || abs(p.Source))
		switch p.Kind {
		case ProtectReadOnly, ProtectBind, ProtectTmpfs, ProtectDir:
		case ProtectSymlink:
			ok = ok && p.Source != ""
		default:
			ok = false
		}
		if !ok {
			return fmt.Errorf("bad protected path %q (%s %q)", p.Path, p.Kind, p.Source)
		}
	}
	return nil
}

type limited struct {
	f *os.File
	n int64
}

func (l *limited) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("too large")
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.f.Read(p)
	l.n -= int64(n)
	return n, err
}
