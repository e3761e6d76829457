package launch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/placeholder"
	"github.com/claude-sandbox/claude-sandbox/manifest"
	"github.com/claude-sandbox/claude-sandbox/secrets"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// Plan is a decided sandbox start, before anything on the host changes:
// what the sandbox sees (mounts), its environment and network, the program
// it runs, what the host must have first (Prepare), and the backend's
// rendering of all that (Invocation), which --dry-run prints and Start
// runs. It is built by NewPlan and the backend's Plan; every later stage
// reads it, nothing re-parses a command line (runc's libcontainer/configs
// is the model).
type Plan struct {
	Backend  string
	ID       string // the registry id the sandbox will have
	Project  string
	StateDir string // the project's state directory (ProjectStatePath); Start creates it
	Network  bool   // shares the host's network; otherwise it has loopback only
	Cwd      string
	Command  []string // the program, decided once (Command)
	Env      []string // the program's whole environment, sorted NAME=value
	Mounts   []Mount  // in order: a directory or tmpfs comes before what is mounted inside it
	Prepare  []HostDir
	// Files are written on the host at Start (in RunDir), for a backend
	// that binds a file rather than taking its content by descriptor.
	Files []HostFile

	// RunDir holds the sandbox's sockets (RunDir(StateDir, ID)).
	RunDir string
	// NixGateway is the host path of the Nix daemon gateway's socket,
	// bound into the sandbox at the daemon's usual path; "" when the
	// sandbox gets no Nix daemon. NixUpstream is the host daemon's socket
	// it forwards to.
	NixGateway  string
	NixUpstream string
	// SSHAgent is the host path of the filtering SSH agent's socket,
	// SSHUpstream the host agent it forwards to ("": none).
	SSHAgent, SSHUpstream string
	// Secrets are the launch's resolved secrets (nil: none); TrustDir the
	// run directory's folder where the supervisor writes its CA's
	// certificate, bound read-only into the sandbox ("" without secrets).
	Secrets  *secrets.Set
	TrustDir string
	// ChromiumPolicies is the run directory's folder bound at Chromium's
	// managed policy directory when there are secrets (ChromiumTrustMounts).
	ChromiumPolicies string
	// ClaudeLogin is the run directory's file bound over Claude Code's
	// credentials inside ("": the host's login is not handled), and
	// ClaudeConfigDir the host's ~/.claude it stands for.
	ClaudeLogin, ClaudeConfigDir string

	// brokered: the launch resolved its secrets (a backend that brokers
	// them, a network, not a dry run).
	brokered bool

	// Protected lists the paths the sandbox sees but cannot change on the
	// host, and how the mounts cover each (ProjectProtection, ClaudeHome):
	// for --dry-run, the session notice, and a backend that covers them
	// its own way.
	Protected []Protected

	// held are the placeholders PrepareHost holds for this sandbox.
	held []*placeholder.Held

	// Invocation is the backend's rendering: what Start executes (bwrap,
	// systemd-nspawn, QEMU).
	Invocation *Invocation
	// Detail is the backend's own part of the plan, for its Start.
	Detail any
	// BeforeLeave is for a backend that runs its first session itself (a
	// VM): called once that session's command has ended, while the
	// sandbox still lives (learn mode asks its supervisor what was reached).
	BeforeLeave func(ctx context.Context, rec *Record)
}

// MountKind says what a Mount puts at its destination.
type MountKind uint8

const (
	Bind    MountKind = iota + 1 // the host path, read-write
	ROBind                       // the host path, read-only
	DevBind                      // the host path with its device nodes usable (the GPU)
	Tmpfs                        // an empty tmpfs
	Dir                          // an empty directory of the sandbox user's own (Mode)
	File                         // a file holding Data, or a snapshot of Source: a copy, never a bind
	Symlink                      // a symbolic link to Source
)

func (k MountKind) String() string {
	switch k {
	case Bind:
		return "bind"
	case ROBind:
		return "ro-bind"
	case DevBind:
		return "dev-bind"
	case Tmpfs:
		return "tmpfs"
	case Dir:
		return "dir"
	case File:
		return "file"
	case Symlink:
		return "symlink"
	}
	return fmt.Sprintf("MountKind(%d)", uint8(k))
}

// Mount is one thing placed in the sandbox's file system.
type Mount struct {
	Kind   MountKind
	Source string // the host path (a symlink's target, a file's origin)
	Dest   string // the path inside
	// Optional: left out where Source does not exist (bwrap's -try forms)
	// or cannot be read, rather than failing the start.
	Optional bool
	Mode     fs.FileMode // Dir, File: the permissions (0: the backend's default)
	Data     []byte      // File: the content, when it is not read from Source
	Secret   bool        // File: its content is never printed
	Tag      string      // the name a VM guest mounts it by
}

// HostDir is a directory Start creates on the host before the sandbox
// starts (Plan only lists it). A directory already there is kept; anything
// else in its place is an error, and a symlink is never followed.
type HostDir struct {
	Path string
	Mode fs.FileMode
	// Owner, when set, is who gets the directory: a root launcher creates
	// it for the user the sandbox runs as.
	Owner *Owner
	// File: an empty regular file rather than a directory (a file Claude
	// Code records into, bound into the sandbox).
	File bool
	// Placeholder: made only to hold a protected name that is missing on
	// the host (ProjectProtection); it is recorded in the project's state
	// and removed, if still empty, when the last sandbox using it ends.
	Placeholder bool
}

// HostFile is a file Start writes on the host before the sandbox starts:
// never a secret (a run directory is private, but not memory).
type HostFile struct {
	Path string
	Data []byte
	Mode fs.FileMode
}

// Owner is a uid and gid.
type Owner struct{ UID, GID int }

// WillExist says whether path exists on the host, or will once Start has
// prepared it: what a backend that cannot skip a missing source (nspawn)
// checks an optional mount against.
func (p *Plan) WillExist(path string, exists func(string) bool) bool {
	for _, d := range p.Prepare {
		if d.Path == path {
			return true
		}
	}
	return exists(path)
}

// PrepareHost creates every HostDir of the plan, in order, and holds its
// placeholders for the sandbox (ReleasePlaceholders gives them up). The
// project state directory they may lie in exists already: Claim made it.
func PrepareHost(p *Plan) error {
	for _, d := range p.Prepare {
		if d.Placeholder {
			h, err := placeholder.Hold(d.Path, placeholderRecords(p.StateDir), (*placeholder.Owner)(d.Owner))
			if err != nil {
				p.ReleasePlaceholders()
				return fmt.Errorf("preparing %s: %w", d.Path, err)
			}
			p.held = append(p.held, h)
			continue
		}
		if err := d.create(); err != nil {
			p.ReleasePlaceholders()
			return err
		}
	}
	for _, f := range p.Files {
		if err := os.MkdirAll(filepath.Dir(f.Path), 0o700); err != nil {
			return fmt.Errorf("preparing %s: %w", f.Path, err)
		}
		if err := os.WriteFile(f.Path, f.Data, f.Mode); err != nil {
			return fmt.Errorf("preparing %s: %w", f.Path, err)
		}
	}
	return nil
}

func (d HostDir) create() error {
	st, err := os.Lstat(d.Path)
	switch {
	case err == nil && st.IsDir() && !d.File, err == nil && st.Mode().IsRegular() && d.File:
		return nil
	case err == nil && d.File:
		return fmt.Errorf("preparing %s: it exists and is not a regular file", d.Path)
	case err == nil:
		return fmt.Errorf("preparing %s: it exists and is not a directory", d.Path)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("preparing %s: %w", d.Path, err)
	}
	if d.File {
		// Never through a link planted meanwhile, never over a file.
		fd, err := unix.Open(d.Path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(d.Mode.Perm()))
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("preparing %s: %w", d.Path, err)
		}
		if err == nil {
			unix.Close(fd)
		}
	} else if err := os.Mkdir(d.Path, d.Mode); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("preparing %s: %w", d.Path, err)
	}
	if d.Owner != nil {
		if err := os.Lchown(d.Path, d.Owner.UID, d.Owner.GID); err != nil {
			return fmt.Errorf("preparing %s: %w", d.Path, err)
		}
	}
	return nil
}

// placeholderRecords is where a project's state records the placeholders
// sandboxes made ("" without a state directory).
func placeholderRecords(stateDir string) string {
	if stateDir == "" {
		return ""
	}
	return filepath.Join(stateDir, StatePlaceholders)
}

// ReleasePlaceholders gives up the placeholders PrepareHost held: each is
// removed if no other sandbox holds it and it is still empty. For a
// sandbox that ended under this process, or never started.
func (p *Plan) ReleasePlaceholders() {
	for _, h := range p.held {
		_, _ = placeholder.Release(h.Path, h.File, h.Recorded, placeholderRecords(p.StateDir))
	}
	p.held = nil
}

// handOverPlaceholders closes this process's copies of the held
// placeholders once another process (the sandbox's supervisor) holds them.
func (p *Plan) handOverPlaceholders() {
	for _, h := range p.held {
		h.File.Close()
	}
	p.held = nil
}

// HandPlaceholders is for a backend that starts its supervisor itself (a
// VM's): the placeholders PrepareHost holds, as the supervisor's spec
// names them, each descriptor numbered by add (the supervisor's
// inherited files). Once the supervisor runs, HandedPlaceholders closes
// this process's copies.
func (p *Plan) HandPlaceholders(add func(*os.File) int) (specs []control.PlaceholderSpec, records string) {
	for _, h := range p.held {
		specs = append(specs, control.PlaceholderSpec{Path: h.Path, FD: add(h.File), Recorded: h.Recorded})
	}
	if len(specs) > 0 {
		records = placeholderRecords(p.StateDir)
	}
	return specs, records
}

// HandedPlaceholders: the supervisor given HandPlaceholders' descriptors
// runs, and holds them from now on.
func (p *Plan) HandedPlaceholders() { p.handOverPlaceholders() }

// NewPlan starts the plan of a sandbox: what the core decides for every
// backend (id, project, state directory, network, the program and its
// working directory). The backend's Plan completes it.
func NewPlan(b Backend, m *manifest.Manifest, rt *Runtime, id string) *Plan {
	p := &Plan{
		Backend:  b.Name(),
		ID:       id,
		Project:  rt.Project,
		StateDir: rt.StateDir,
		Network:  rt.Network,
		Cwd:      rt.Project,
		Command:  Command(b, m, rt),
	}
	if rt.StateDir != "" {
		p.RunDir = RunDir(rt.StateDir, id)
	}
	return p
}

// MergeEnv overlays maps of variables on a NAME=value list, later ones
// winning, and returns it sorted.
func MergeEnv(base []string, overlays ...map[string]string) []string {
	m := make(map[string]string, len(base)+8)
	for _, kv := range base {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	for _, o := range overlays {
		for k, v := range o {
			m[k] = v
		}
	}
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// EnvValue returns a variable's value in a NAME=value list.
func EnvValue(env []string, name string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}
