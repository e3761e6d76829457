package launch

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
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
	// Backend-specific handles.
	InnerPID int    `json:"innerPid,omitempty"` // bubblewrap: the sandbox's init, to nsenter
	Machine  string `json:"machine,omitempty"`  // container: the nspawn machine name
	Console  string `json:"console,omitempty"`  // vm: the second console's Unix socket
	QMP      string `json:"qmp,omitempty"`      // vm: the QMP socket
}

// Alive says whether the recorded process still runs (and is the same
// process, not a later one that reused its pid).
func (r *Record) Alive() bool {
	if r.PID <= 0 {
		return false
	}
	start, err := processStart(r.PID)
	return err == nil && start == r.PIDStart
}

// processStart reads field 22 of /proc/PID/stat (start time since boot).
func processStart(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: skip to the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return 0, errors.New("malformed stat")
	}
	if fields[0] == "Z" || fields[0] == "X" {
		// Exited, not yet reaped by its parent: no sandbox any more.
		return 0, errors.New("exited")
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// ProcessStart is processStart for the current process, for a record
// written before exec (the pid and its start time survive exec).
func ProcessStart(pid int) (uint64, error) { return processStart(pid) }

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
