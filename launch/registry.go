package launch

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
	"github.com/claude-sandbox/claude-sandbox/internal/filelock"
	"github.com/claude-sandbox/claude-sandbox/internal/proc"
)

// Record describes one running sandbox, for `enter`, `stop`, `ps` and for a
// second launch that joins the first. Backends fill what they have.
type Record struct {
	ID       string    `json:"id"`
	Project  string    `json:"project"`
	Backend  string    `json:"backend"`
	PID      int       `json:"pid"`      // the host process that is the sandbox (bwrap, nspawn, qemu)
	PIDStart uint64    `json:"pidStart"` // its start time in clock ticks: a recycled pid does not match
	Started  time.Time `json:"started"`
	Closure  string    `json:"closure"` // the closure's store path
	// Config fingerprints every choice that shapes the sandbox (ConfigOf):
	// a second launch joins only a sandbox it would have started itself.
	Config string `json:"config,omitempty"`
	// Control is the supervisor's control socket: sessions join through it,
	// stop and ps ask it.
	Control string `json:"control,omitempty"`
	// A backend's handles on a running sandbox (a VM's consoles).
	Console string `json:"console,omitempty"` // the second console's Unix socket
	QMP     string `json:"qmp,omitempty"`     // the QMP socket
}

// Alive says whether the recorded process still runs (and is the same
// process, not a later one that reused its pid), and, for a sandbox under
// a supervisor, whether that supervisor still takes sessions: it removes
// its control socket the moment it decides the sandbox ends, which it may
// lack the right to record otherwise (a container's supervisor is not
// root, its registry is).
func (r *Record) Alive() bool {
	if !proc.Running(r.PID, r.PIDStart) {
		return false
	}
	if r.Control != "" {
		if _, err := os.Lstat(r.Control); err != nil {
			return false
		}
	}
	return true
}

// Open takes a handle on the recorded process, to signal it and wait for
// it; proc.ErrExited when it has gone.
func (r *Record) Open() (*proc.Process, error) { return proc.Open(r.PID, r.PIDStart) }

func recordsDir(stateDir string) string { return filepath.Join(stateDir, "sandboxes") }

// NewRecordID returns a short random id.
func NewRecordID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Register writes a record into the project's state directory atomically.
func Register(stateDir string, r *Record) error {
	dir := recordsDir(stateDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, r.ID+".json"), data, 0o600)
}

// Unregister removes a record.
func Unregister(stateDir, id string) {
	_ = os.Remove(filepath.Join(recordsDir(stateDir), id+".json"))
}

// Running lists the live sandboxes of one project, oldest first, removing
// records whose process is gone (a killed run leaves one behind).
func Running(stateDir string) ([]*Record, error) {
	entries, err := os.ReadDir(recordsDir(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Record
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(recordsDir(stateDir), e.Name())
		data, err := os.ReadFile(path)
		var r Record
		if err != nil || json.Unmarshal(data, &r) != nil || !r.Alive() {
			_ = os.Remove(path)
			continue
		}
		out = append(out, &r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out, nil
}

// AllRunning lists the live sandboxes of every project of this user.
func AllRunning() ([]*Record, error) {
	root, err := StateRoot()
	if err != nil {
		return nil, err
	}
	projects, err := os.ReadDir(filepath.Join(root, "projects"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Record
	for _, p := range projects {
		rs, err := Running(filepath.Join(root, "projects", p.Name()))
		if err != nil {
			continue
		}
		out = append(out, rs...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out, nil
}

// One sandbox per project: deciding whether a launch joins a running
// sandbox or starts one, for every backend. The decision and the
// registration happen under a per-project lock, so two launches at once
// cannot both start one; the record is written before the sandbox starts
// (for bubblewrap, before this process becomes bwrap), so the next launch
// finds it from the first instant.

// ConfigOf fingerprints every choice that shapes a sandbox: its closure and
// the run-time switches that change its mounts, network or environment.
// What only changes the program started in it (--shell, a command, Claude's
// arguments, --tmux) is not part of it: such launches share the sandbox.
func ConfigOf(backend, closure string, rt *Runtime) string {
	env := append([]string(nil), rt.ExtraEnv...)
	sort.Strings(env)
	unprotect := append([]string(nil), rt.Unprotect...)
	sort.Strings(unprotect)
	h := sha256.New()
	if e := rt.Egress; e != nil {
		fmt.Fprintf(h, "egress=%s\x00upstream=%s\x00%s\x00", e.Mode, e.Upstream, e.NoProxy)
		for _, r := range e.Allow {
			fmt.Fprintf(h, "allow=%s\x00", r.Text)
		}
		for _, r := range e.Deny {
			fmt.Fprintf(h, "deny=%s\x00", r.Text)
		}
	}
	for _, b := range rt.Secrets {
		fmt.Fprintf(h, "secret=%s\x00%s\x00%s\x00%t\x00%s\x00", b.Name, b.Variable, strings.Join(b.HostTexts(), ","), b.Bodies, b.Source)
	}
	fmt.Fprintf(h, "ssh-keys=%t\x00%s\x00real-claude-login=%t\x00", rt.SSHKeys == nil, strings.Join(rt.SSHKeys, ","), rt.RealClaudeLogin)
	fmt.Fprintf(h, "backend=%s\x00closure=%s\x00network=%t\x00protect=%t\x00unprotect=%s\x00nix-daemon=%t\x00nix-unsandboxed-builds=%t\x00desktop=%t\x00gh-token=%t\x00env=%s\x00home=%s",
		backend, closure, rt.Network, rt.Protect, strings.Join(unprotect, "\x01"), rt.NixDaemon, rt.NixUnsandboxedBuilds, !rt.NoDesktop, rt.GHToken, strings.Join(env, ","), rt.Home)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Claim decides, for this process about to start a sandbox described by
// rec (its Project, Backend, Closure and Config set; its ID too when the
// plan named it), between joining a running sandbox of the project with
// the same configuration (returned as join) and starting its own, in which
// case rec is completed with this process's identity and registered (this
// process becomes the sandbox or its parent, and keeps its pid). It creates
// the project's state directory. Running sandboxes of the project with
// another configuration are returned as others. forceNew (--new) never
// joins.
func Claim(ctx context.Context, stateDir string, rec *Record, forceNew bool) (join *Record, others []*Record, err error) {
	if err := EnsureProjectStateDir(stateDir, rec.Project); err != nil {
		return nil, nil, err
	}
	// Held for milliseconds by a launch deciding: check often.
	unlock, err := filelock.Acquire(ctx, filepath.Join(stateDir, "sandboxes.lock"), 10*time.Millisecond)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	running, err := Running(stateDir)
	if err != nil {
		return nil, nil, err
	}
	for _, r := range running {
		if !forceNew && join == nil && r.Config == rec.Config && r.Backend == rec.Backend {
			join = r
			continue
		}
		others = append(others, r)
	}
	if join != nil {
		return join, others, nil
	}
	if rec.ID == "" {
		rec.ID = NewRecordID()
	}
	rec.PID = os.Getpid()
	if rec.PIDStart, err = proc.StartTime(rec.PID); err != nil {
		return nil, nil, fmt.Errorf("registering the sandbox: %w", err)
	}
	rec.Started = time.Now().UTC()
	if err := Register(stateDir, rec); err != nil {
		return nil, nil, fmt.Errorf("registering the sandbox: %w", err)
	}
	return nil, others, nil
}

// RunningFor lists the live sandboxes of a project without creating its
// state directory.
func RunningFor(project string) ([]*Record, error) {
	dir, err := ProjectStatePath(project)
	if err != nil {
		return nil, err
	}
	return Running(dir)
}
