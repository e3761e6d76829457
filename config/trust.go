package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
)

// TrustStore records which project files the user approved, one file per
// approval named by the approval's digest (like direnv's allow directory):
// checking a file costs one stat, and an edited file simply has no record.
type TrustStore struct{ Dir string }

// ModuleDigest is one module file an approval covers.
type ModuleDigest struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"` // "missing" when the file could not be read
}

// Approval is one recorded approval.
type Approval struct {
	Path       string         `json:"path"`
	Digest     string         `json:"digest"`
	FileSHA256 string         `json:"fileSha256"`
	Modules    []ModuleDigest `json:"modules,omitempty"`
	Approved   time.Time      `json:"approved"`
}

// maxModuleSize matches nixgen's limit on a module file.
const maxModuleSize = 1 << 20

// Digest is what an approval is bound to: the file's path, its bytes, and
// the bytes of every module file it names. The path is in it because the
// same text means different things elsewhere (relative module paths);
// module contents are in it because `modules = ["./sandbox.nix"]` approves
// that code, not whatever the repository later puts in its place.
func Digest(f *File) (digest string, modules []ModuleDigest) {
	h := sha256.New()
	fmt.Fprintf(h, "claude-sandbox trust v1\x00%s\x00%d\x00", f.Path, len(f.Content))
	h.Write(f.Content)
	if s, ok := f.Get("modules"); ok {
		for _, p := range s.List {
			md := ModuleDigest{Path: p, SHA256: fileSHA256(p, maxModuleSize)}
			fmt.Fprintf(h, "\x00module\x00%s\x00%s", md.Path, md.SHA256)
			modules = append(modules, md)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), modules
}

func fileSHA256(path string, limit int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "missing"
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, limit+1))
	if err != nil || n > limit {
		return "missing"
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (s TrustStore) record(digest string) string { return filepath.Join(s.Dir, digest+".json") }

// Approved returns the approval of the file as it is now, if any.
func (s TrustStore) Approved(f *File) (*Approval, bool) {
	digest, _ := Digest(f)
	data, err := os.ReadFile(s.record(digest))
	if err != nil {
		return nil, false
	}
	var a Approval
	if json.Unmarshal(data, &a) != nil || a.Digest != digest || a.Path != f.Path {
		return nil, false
	}
	return &a, true
}

// Approve records the file as it is now.
func (s TrustStore) Approve(f *File) (*Approval, error) {
	digest, modules := Digest(f)
	sum := sha256.Sum256(f.Content)
	a := &Approval{Path: f.Path, Digest: digest, FileSHA256: hex.EncodeToString(sum[:]), Modules: modules, Approved: time.Now().UTC()}
	data, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the trust store: %w", err)
	}
	if err := atomicfile.Write(s.record(digest), append(data, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("recording the approval: %w", err)
	}
	return a, nil
}

// Revoke removes every approval of the file at path; it returns how many.
func (s TrustStore) Revoke(path string) (int, error) {
	all, err := s.List()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, a := range all {
		if a.Path != path {
			continue
		}
		if err := os.Remove(s.record(a.Digest)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return n, err
		}
		n++
	}
	return n, nil
}

// List returns every approval, newest first.
func (s TrustStore) List() ([]Approval, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Approval
	for _, e := range entries {
		digest, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(digest, ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.Dir, e.Name()))
		var a Approval
		if err != nil || json.Unmarshal(data, &a) != nil || a.Digest != digest {
			continue
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Approved.After(out[j].Approved) })
	return out, nil
}

// latestFor is the newest approval of an earlier content of the file.
func (s TrustStore) latestFor(path string) *Approval {
	all, _ := s.List()
	for _, a := range all {
		if a.Path == path {
			return &a
		}
	}
	return nil
}

// Status is a project file's standing with the user.
type Status struct {
	File      *File
	Widenings []Widening
	Approval  *Approval // of the current content
	Earlier   *Approval // of an earlier content, when the current one has none
}

// Effective says whether the file may take effect as it is.
func (st Status) Effective() bool { return len(st.Widenings) == 0 || st.Approval != nil }

// Describe is one line for people.
func (st Status) Describe() string {
	switch {
	case st.File == nil:
		return "no project configuration file"
	case len(st.Widenings) == 0 && st.Approval == nil:
		return "needs no approval: it only adds packages or narrows access"
	case st.Approval != nil:
		return "trusted (approved " + st.Approval.Approved.Local().Format("2006-01-02 15:04") + ")"
	case st.Earlier != nil:
		return "NOT trusted: changed since you approved it on " + st.Earlier.Approved.Local().Format("2006-01-02 15:04")
	}
	return "NOT trusted: never approved"
}

// Check works out a project file's status.
func (s TrustStore) Check(project, user *File, defaults Defaults) Status {
	st := Status{File: project}
	if project == nil {
		return st
	}
	st.Widenings = Widenings(project, user, defaults)
	if a, ok := s.Approved(project); ok {
		st.Approval = a
		return st
	}
	if len(st.Widenings) > 0 {
		st.Earlier = s.latestFor(project.Path)
	}
	return st
}

// UntrustedError: a project file widens access and the user has not
// approved it as it is now.
type UntrustedError struct {
	Status
	Project string // the project directory, for the commands in the hint
}

func (e *UntrustedError) Error() string {
	keys := make([]string, 0, len(e.Widenings))
	for _, w := range e.Widenings {
		keys = append(keys, w.Setting.Key.Name)
	}
	state := "you have not approved it"
	if e.Earlier != nil {
		state = "it changed since you approved it"
	}
	return fmt.Sprintf("%s widens the sandbox's access (%s) and %s: nothing was started",
		e.File.Path, strings.Join(keys, ", "), state)
}

func (e *UntrustedError) Hint() string {
	p := shellQuote(e.Project)
	return fmt.Sprintf("review it with `claude-sandbox trust --show %s`, then approve it with `claude-sandbox trust %s`", p, p)
}

// shellQuote makes a path safe to paste into a shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./+:@%,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
