// Package sessionlog is a sandbox's decision log: one JSON object per line,
// appended by the services of the sandbox's supervisor (the Nix daemon
// gateway, the egress proxy, the SSH agent filter, the credential broker)
// and read by `claude-sandbox log`. It owns the entry's shape and the file's
// handling (append-only, bounded, tolerant of a torn last line); it decides
// nothing and never sees a secret's value.
package sessionlog

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"sync"
	"time"
)

// Decision is what a service did with a request.
type Decision string

const (
	Allow  Decision = "allow"
	Refuse Decision = "refuse"
	// Note records something that was neither allowed nor refused (a
	// secret whose source failed, a service that stopped).
	Note Decision = "note"
)

// Entry is one line of the log.
type Entry struct {
	Time     time.Time `json:"time"`
	Sandbox  string    `json:"sandbox,omitempty"` // the registry id of the sandbox
	Service  string    `json:"service"`           // "nix", "net", "ssh-agent", "secret", …
	Decision Decision  `json:"decision"`
	Op       string    `json:"op,omitempty"`     // the operation: a Nix op, CONNECT, GET, socks5, sign
	Target   string    `json:"target,omitempty"` // what it was about: a store path, host:port, a key
	Rule     string    `json:"rule,omitempty"`   // the rule that decided (a configuration line or a built-in rule's name)
	Reason   string    `json:"reason,omitempty"` // one sentence for a person
	Fix      string    `json:"fix,omitempty"`    // the configuration line or flag that would allow it
}

// Logger receives entries. Implementations must be safe for concurrent use.
type Logger interface{ Log(Entry) }

// Func adapts a function to a Logger.
type Func func(Entry)

func (f Func) Log(e Entry) { f(e) }

// Discard drops every entry.
var Discard Logger = Func(func(Entry) {})

// DefaultMaxSize is the size at which a log file is rotated (the old one
// kept as PATH.1): a sandbox refused in a loop must not fill the disk.
const DefaultMaxSize = 16 << 20

// File appends entries to a log file. Lines are written whole with one
// write(2) on an O_APPEND descriptor, so supervisors of several sandboxes
// of one project can share a file without interleaving lines.
type File struct {
	mu      sync.Mutex
	path    string
	f       *os.File
	sandbox string
	size    int64
	maxSize int64
}

// Open opens (creating, mode 0600) the log at path for appending entries
// of the sandbox with registry id sandbox.
func Open(path, sandbox string) (*File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &File{path: path, f: f, sandbox: sandbox, size: st.Size(), maxSize: DefaultMaxSize}, nil
}

// Log appends e, stamped with the time and the sandbox's id. A write
// error is dropped: the log must never be the reason a request fails.
func (l *File) Log(e Entry) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	if e.Sandbox == "" {
		e.Sandbox = l.sandbox
	}
	line, err := json.Marshal(e)
	if err != nil {
		return
	}
	line = append(line, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	if l.size+int64(len(line)) > l.maxSize {
		l.rotate()
	}
	n, _ := l.f.Write(line)
	l.size += int64(n)
}

// rotate keeps the current file as PATH.1 and starts an empty one. Another
// supervisor still appending to the old file writes into PATH.1 until it
// rotates too; nothing is lost.
func (l *File) rotate() {
	_ = os.Rename(l.path, l.path+".1")
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	l.f.Close()
	l.f, l.size = f, 0
}

// Close closes the file; later entries are dropped.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// maxLine bounds one entry when reading: a damaged file must not make the
// reader allocate without limit.
const maxLine = 1 << 20

// Read calls fn for every entry of the log at path, oldest first (the
// rotated PATH.1 first). Lines that are not entries (a torn last line of a
// killed writer) are skipped. A missing log is empty.
func Read(path string, fn func(Entry) error) error {
	for _, p := range []string{path + ".1", path} {
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		_, err = readFrom(f, fn)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// readFrom reads whole lines from r and returns how many bytes it consumed
// (a partial last line is left for a later read).
func readFrom(r io.Reader, fn func(Entry) error) (int64, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var consumed int64
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// Longer than any entry: skip to the next newline.
			consumed += int64(len(line))
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				consumed += int64(len(line))
			}
			if err != nil {
				return consumed, nil
			}
			continue
		}
		if err != nil {
			return consumed, nil // EOF: a line without its newline is not complete yet
		}
		consumed += int64(len(line))
		if len(line) > maxLine {
			continue
		}
		var e Entry
		if json.Unmarshal(bytes.TrimSpace(line), &e) != nil || e.Service == "" {
			continue
		}
		if err := fn(e); err != nil {
			return consumed, err
		}
	}
}

// Follow is Read, then waits for new entries until ctx ends (tail -f).
// It notices a rotation by the file getting shorter than what was read.
func Follow(ctx context.Context, path string, poll time.Duration, fn func(Entry) error) error {
	if err := readRotated(path, fn); err != nil {
		return err
	}
	var offset int64
	for {
		f, err := os.Open(path)
		if err == nil {
			if st, err := f.Stat(); err == nil && st.Size() < offset {
				offset = 0 // rotated
			}
			if _, err := f.Seek(offset, io.SeekStart); err == nil {
				n, rerr := readFrom(f, fn)
				offset += n
				if rerr != nil {
					f.Close()
					return rerr
				}
			}
			f.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
	}
}

// readRotated reads only PATH.1: Follow reads PATH itself from offset 0.
func readRotated(path string, fn func(Entry) error) error {
	f, err := os.Open(path + ".1")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = readFrom(f, fn)
	return err
}
