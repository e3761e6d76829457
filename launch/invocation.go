package launch

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Invocation is a backend's rendering of a plan: the program to execute,
// its arguments, environment and extra file descriptors.
type Invocation struct {
	Path string   `json:"path"`
	Args []string `json:"args"` // argv, Args[0] included
	Env  []string `json:"env"`
	// Files become descriptors of the program; Args name them by number.
	Files []*ExtraFile `json:"files,omitempty"`
	// Session is the command a launch runs in the sandbox once it is up
	// (the sandbox program itself runs a keeper, and sessions join it).
	Session []string `json:"session,omitempty"`
}

// ExtraFile is one descriptor handed to the program: bwrap reads its
// seccomp filter and file copies from descriptors, never from paths the
// sandbox could race.
type ExtraFile struct {
	FD       int    `json:"fd"`
	What     string `json:"what"`
	Source   string `json:"source,omitempty"` // the host file it is a snapshot of
	Data     []byte `json:"data,omitempty"`   // its bytes, where they are not a secret
	file     *os.File
	argIndex int // where Args names its number
}

// AppendFile passes data to the program as a descriptor and appends flag
// and the descriptor's number to Args. The data lives in sealed anonymous
// memory: nothing is written to a disk, so a secret (the ~/.claude.json
// copy) leaves no file behind, and what the program reads is what was
// checked.
func (inv *Invocation) AppendFile(flag, what, source string, data []byte, secret bool) error {
	f, err := memFile(what, data)
	if err != nil {
		return err
	}
	x := &ExtraFile{FD: int(f.Fd()), What: what, Source: source, file: f}
	if !secret {
		x.Data = data
	}
	inv.Files = append(inv.Files, x)
	inv.Args = append(inv.Args, flag, strconv.Itoa(x.FD))
	x.argIndex = len(inv.Args) - 1
	return nil
}

// Descriptor is the open file behind an extra file (nil once released).
func (f *ExtraFile) Descriptor() *os.File { return f.file }

// Close releases the descriptors of an invocation that will not run.
func (inv *Invocation) Close() {
	if inv == nil {
		return
	}
	for _, f := range inv.Files {
		if f.file != nil {
			f.file.Close()
		}
	}
}

// Exec replaces this process with the invocation, so the sandbox's exit
// status is ours and no claude-sandbox process lingers beside it. It
// returns only on failure.
func Exec(inv *Invocation) error {
	// The descriptors keep their numbers: moving them onto 3, 4, … could
	// close one the Go runtime still uses (its epoll descriptor) just
	// before the exec.
	for _, f := range inv.Files {
		if f.file == nil {
			return fmt.Errorf("starting %s: descriptor %d (%s) was already released", inv.Path, f.FD, f.What)
		}
		if _, err := unix.FcntlInt(f.file.Fd(), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("starting %s: %w", inv.Path, err)
		}
	}
	err := unix.Exec(inv.Path, inv.Args, inv.Env)
	return fmt.Errorf("starting %s: %w", inv.Path, err)
}

// Printable is what --dry-run prints: the invocation renumbered as a
// program started with its Files as descriptors 3, 4, … in order would see
// it (os/exec's ExtraFiles), so it can be run by hand, and with the value
// of every variable that may be a secret replaced by <redacted>
// (ShownOnDryRun).
func (inv *Invocation) Printable() *Invocation {
	out := *inv
	out.Args = append([]string(nil), inv.Args...)
	out.Files = nil
	for i, f := range inv.Files {
		g := *f
		g.FD = 3 + i
		if f.argIndex > 0 && f.argIndex < len(out.Args) {
			out.Args[f.argIndex] = strconv.Itoa(g.FD)
		}
		out.Files = append(out.Files, &g)
	}
	out.Env = nil
	for _, kv := range inv.Env {
		name, _, _ := strings.Cut(kv, "=")
		if !ShownOnDryRun(name) {
			kv = name + "=<redacted>"
		}
		out.Env = append(out.Env, kv)
	}
	return &out
}

// Open returns a readable copy of an extra file's content for a program
// started by hand from a Printable invocation.
func (f *ExtraFile) Open() (*os.File, error) {
	if f.Data != nil {
		return memFile(f.What, f.Data)
	}
	if f.Source != "" {
		data, err := SnapshotFile(f.Source)
		if err != nil {
			return nil, err
		}
		return memFile(f.What, data)
	}
	return nil, fmt.Errorf("descriptor %d (%s) has no content to reproduce", f.FD, f.What)
}

// memFile returns an anonymous in-memory file holding data, positioned at
// its start.
func memFile(name string, data []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, err
	}
	_, _ = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE)
	if _, err := f.Seek(0, 0); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// SnapshotFile reads a regular file whole, checking that it did not change
// while being read (a writer rewriting it in place would otherwise give a
// torn copy; one replacing it by rename does not affect the open
// descriptor).
func SnapshotFile(path string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		before, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		if !before.Mode().IsRegular() {
			f.Close()
			return nil, fmt.Errorf("%s is not a regular file", path)
		}
		data, err := io.ReadAll(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		after, err := f.Stat()
		f.Close()
		if err != nil {
			return nil, err
		}
		if (after.Size() == int64(len(data)) && after.ModTime().Equal(before.ModTime())) || attempt == 4 {
			return data, nil
		}
	}
}
