package secrets

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// DefaultTimeout bounds a command source without its own timeout.
const DefaultTimeout = 30 * time.Second

// maxValue bounds what a source may produce: a secret is a token, a key,
// a password, not a file's worth of data.
const maxValue = 64 << 10

// Options are what resolution needs from the host.
type Options struct {
	// LookupEnv reads the host environment (nil: os.LookupEnv).
	LookupEnv func(string) (string, bool)
	// Inside are directories the sandbox can read or write (the project,
	// its state): a file source or a command there is refused, since the
	// sandbox could read the secret or replace the program.
	Inside []string
}

// Status is how a secret's source fared.
type Status int

const (
	Resolved Status = iota // the value is known; the sandbox gets a placeholder
	Absent                 // a built-in whose host variable is not set: nothing to do
	Failed                 // the source failed: the variable stays unset, with a warning
)

func (s Status) String() string {
	switch s {
	case Resolved:
		return "ok"
	case Absent:
		return "not set"
	}
	return "FAILED"
}

// Secret is one binding's outcome. Printing it never shows the value.
type Secret struct {
	Binding
	Status Status
	Err    error // Failed: why (never containing the value)

	value       hidden
	placeholder string
}

// hidden is a real value: formatting it, or a Secret or Set holding it,
// shows no byte of it (a %+v in a debug line must not leak).
type hidden string

func (hidden) String() string   { return "[hidden]" }
func (hidden) GoString() string { return `"[hidden]"` }

// String names the secret and its state, never its value.
func (s Secret) String() string {
	return fmt.Sprintf("secret %s (%s, %s)", s.Name, s.Source, s.Status)
}

// GoString is String: %#v must not show the value either.
func (s Secret) GoString() string { return s.String() }

// String lists the secrets, never their values.
func (s Set) String() string {
	names := make([]string, len(s.secrets))
	for i, sec := range s.secrets {
		names[i] = sec.String()
	}
	return "[" + strings.Join(names, ", ") + "]"
}

// GoString is String.
func (s Set) GoString() string { return s.String() }

// Placeholder is what the sandbox holds (empty unless Resolved).
func (s *Secret) Placeholder() string { return s.placeholder }

// Set is the secrets of one sandbox run.
type Set struct {
	secrets []*Secret
}

// Resolve reads every binding's source and makes a placeholder for each
// value. A source that fails leaves its secret Failed: the variable is
// not set inside the sandbox at all (a placeholder would pretend to work).
func Resolve(ctx context.Context, bindings []Binding, opts Options) *Set {
	set := &Set{}
	for _, b := range bindings {
		s := &Secret{Binding: b}
		value, err := read(ctx, b, opts)
		switch {
		case errors.Is(err, errAbsent):
			s.Status = Absent
		case err != nil:
			s.Status, s.Err = Failed, err
		default:
			p, perr := newPlaceholder(value, b.Prefix)
			if perr != nil {
				s.Status, s.Err = Failed, perr
				break
			}
			s.Status, s.value, s.placeholder = Resolved, hidden(value), p
		}
		set.secrets = append(set.secrets, s)
	}
	return set
}

// Secrets are every binding's outcome, in configuration order.
func (s *Set) Secrets() []*Secret { return s.secrets }

// Env is what the sandbox's environment gets: each resolved secret's
// variable and placeholder.
func (s *Set) Env() map[string]string {
	out := map[string]string{}
	for _, sec := range s.secrets {
		if sec.Status == Resolved {
			out[sec.variable()] = sec.placeholder
		}
	}
	return out
}

// Warnings are one line per failed secret, for the launch to print.
func (s *Set) Warnings() []string {
	var out []string
	for _, sec := range s.secrets {
		if sec.Status == Failed {
			out = append(out, fmt.Sprintf("secret %s: %v; %s is not set in the sandbox", sec.Name, sec.Err, sec.variable()))
		}
	}
	return out
}

// Log writes a note to the session log for each failed secret.
func (s *Set) Log(l sessionlog.Logger) {
	for _, sec := range s.secrets {
		if sec.Status != Failed {
			continue
		}
		l.Log(sessionlog.Entry{Time: time.Now().UTC(), Service: "secret", Decision: sessionlog.Note, Op: "resolve",
			Target: sec.Name, Rule: sec.where(), Reason: fmt.Sprintf("%v; %s is not set in the sandbox", sec.Err, sec.variable()),
			Fix: "fix the source (" + sec.Source.String() + ") and start the sandbox again"})
	}
}

// Redact replaces every real value in text with "[secret NAME]": for
// --dry-run output, logs and error messages.
func (s *Set) Redact(text string) string {
	if s == nil {
		return text
	}
	for _, sec := range s.byLength() {
		text = strings.ReplaceAll(text, string(sec.value), "[secret "+sec.Name+"]")
	}
	return text
}

// byLength lists the resolved secrets longest value first, so a value
// that contains another is replaced whole.
func (s *Set) byLength() []*Secret {
	var out []*Secret
	for _, sec := range s.secrets {
		if sec.Status == Resolved {
			out = append(out, sec)
		}
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && len(out[j].value) > len(out[j-1].value); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

var errAbsent = errors.New("absent")

func read(ctx context.Context, b Binding, opts Options) (string, error) {
	var (
		v   string
		err error
	)
	switch b.Source.Kind {
	case FromEnv:
		v, err = readEnv(b, opts)
	case FromCommand:
		v, err = runCommand(ctx, b.Source, opts)
	case FromFile:
		v, err = readFile(b.Source.File, opts)
	default:
		return "", fmt.Errorf("no source configured")
	}
	if err != nil {
		return "", err
	}
	v = trimNewline(v)
	if v == "" {
		return "", fmt.Errorf("%s gave an empty value", b.Source)
	}
	if i := strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }); i >= 0 {
		what := "a control character"
		if v[i] == '\n' || v[i] == '\r' {
			what = "more than one line"
		}
		return "", fmt.Errorf("%s gave %s: a secret is one line that can travel in an HTTP header (for a pass entry with several lines, command = [\"sh\", \"-c\", \"pass show NAME | head -n1\"])", b.Source, what)
	}
	return v, nil
}

// trimNewline removes one trailing newline (\n or \r\n), as a shell's
// $(…) would, but only one: the rest is the value.
func trimNewline(s string) string {
	if t, ok := strings.CutSuffix(s, "\n"); ok {
		return strings.TrimSuffix(t, "\r")
	}
	return s
}

func readEnv(b Binding, opts Options) (string, error) {
	lookup := opts.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	v, ok := lookup(b.Source.Env)
	if !ok || v == "" {
		if b.BuiltIn && b.set&setSource == 0 {
			return "", errAbsent
		}
		if !ok {
			return "", fmt.Errorf("the host variable %s is not set", b.Source.Env)
		}
		return "", fmt.Errorf("the host variable %s is empty", b.Source.Env)
	}
	return v, nil
}

func runCommand(ctx context.Context, src Source, opts Options) (string, error) {
	prog := src.Command[0]
	if rest, ok := strings.CutPrefix(prog, "~/"); ok {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("command %s: the home directory is not known", prog)
		}
		prog = filepath.Join(home, rest)
	}
	path, err := exec.LookPath(prog)
	if err != nil {
		return "", fmt.Errorf("command %s: not found on PATH", prog)
	}
	if abs, err := filepath.EvalSymlinks(path); err == nil {
		if dir, inside := within(abs, opts.Inside); inside {
			return "", fmt.Errorf("command %s is inside %s, which the sandbox can write: it could replace the program that runs on the host", abs, dir)
		}
	}
	timeout := src.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, src.Command[1:]...)
	cmd.Args[0] = src.Command[0]
	cmd.Stdin = nil // /dev/null: a prompt must not wait on the launch's terminal
	if home, err := os.UserHomeDir(); err == nil {
		cmd.Dir = home // never the project directory
	}
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxValue, 4<<10
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Its own process group, killed whole on timeout: pass runs gpg, which
	// must not outlive it holding the pipes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Run()
	desc := "command " + strings.Join(src.Command, " ")
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return "", fmt.Errorf("%s did not finish within %s", desc, timeout)
	case ctx.Err() != nil:
		return "", fmt.Errorf("%s: %w", desc, ctx.Err())
	case err != nil:
		msg := fmt.Sprintf("%s failed (%v)", desc, err)
		if line := lastLine(stderr.String()); line != "" {
			msg += ": " + line
		}
		return "", errors.New(msg)
	case stdout.over:
		return "", fmt.Errorf("%s printed more than %d KiB", desc, maxValue>>10)
	}
	return stdout.String(), nil
}

// limitedBuffer keeps at most max bytes and notes that there were more.
// (Not an embedded bytes.Buffer: io.Copy would use its ReadFrom and
// bypass the limit.)
type limitedBuffer struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); len(p) > room {
		b.over = true
		if room > 0 {
			b.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *limitedBuffer) String() string { return b.buf.String() }

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > 200 {
		l = l[:200] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, l)
}

func readFile(path string, opts Options) (string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("file %s does not exist", path)
		}
		return "", fmt.Errorf("file %s: %v", path, errors.Unwrap(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("file %s: %v", path, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("file %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		who := "others"
		if perm&0o020 != 0 {
			who = "its group"
			if perm&0o002 != 0 {
				who = "its group and others"
			}
		}
		return "", fmt.Errorf("file %s is writable by %s (mode %04o): they could replace the secret your requests carry; chmod go-w %s", path, who, perm, path)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 && int(sys.Uid) != os.Getuid() {
		return "", fmt.Errorf("file %s is owned by uid %d, neither you nor root: its owner could replace the secret", path, sys.Uid)
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		if dir, inside := within(real, opts.Inside); inside {
			return "", fmt.Errorf("file %s is inside %s, which the sandbox can read: the secret would not stay outside", path, dir)
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, maxValue+1))
	if err != nil {
		return "", fmt.Errorf("file %s: %v", path, err)
	}
	if len(data) > maxValue {
		return "", fmt.Errorf("file %s is larger than %d KiB", path, maxValue>>10)
	}
	return string(data), nil
}

// within says whether path is one of dirs or below it (both resolved).
func within(path string, dirs []string) (string, bool) {
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if r, err := filepath.EvalSymlinks(d); err == nil {
			d = r
		}
		if rel, err := filepath.Rel(d, path); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return d, true
		}
	}
	return "", false
}
