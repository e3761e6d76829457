package vm

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// The metadata share: how the host tells the guest what to run. It is a
// directory of files, each a list of NUL-terminated strings, read by the
// guest agent (templates/vm.nix) as data — no file here is ever sourced or
// evaluated, so no user text becomes shell code in the guest either.
//
//	run    key=value pairs: nonce, user, uid, gid, home, project, shell, tty,
//	       rows, cols, fs, vfsTag, has-<share>, claudeJson, gitconfig
//	argv   the command, one argument an entry
//	env    the command's environment, NAME=value entries
//	claude.json, gitconfig   copies of the host files (never bound)
//
// The directory is 0700 and the files 0600, owned by the calling user: the
// environment carries ANTHROPIC_API_KEY, which must never be readable by
// other host users (and never appears on QEMU's command line).

// vmMeta is what the metadata share carries.
type vmMeta struct {
	Run  map[string]string
	Argv []string
	Env  []string
	// Copies of host files, by name in the share.
	Files map[string][]byte
}

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

// newNonce marks this run's console markers, so output that merely looks
// like one (a file being cat'ed, the kernel log) is never taken for one.
func newNonce() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// encodeNUL joins entries as NUL-terminated strings. An entry holding a NUL
// cannot be represented (nor passed to execve): refused.
func encodeNUL(entries []string) ([]byte, error) {
	var b bytes.Buffer
	for _, e := range entries {
		if strings.IndexByte(e, 0) >= 0 {
			return nil, fmt.Errorf("%q contains a NUL byte", e)
		}
		b.WriteString(e)
		b.WriteByte(0)
	}
	return b.Bytes(), nil
}

func decodeNUL(data []byte) []string {
	var out []string
	for len(data) > 0 {
		i := bytes.IndexByte(data, 0)
		if i < 0 {
			out = append(out, string(data))
			break
		}
		out = append(out, string(data[:i]))
		data = data[i+1:]
	}
	return out
}

// write puts the metadata into dir (created 0700).
func (m *vmMeta) write(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	keys := make([]string, 0, len(m.Run))
	for k := range m.Run {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var run []string
	for _, k := range keys {
		run = append(run, k+"="+m.Run[k])
	}
	files := map[string][]string{"run": run, "argv": m.Argv, "env": m.Env}
	for name, entries := range files {
		data, err := encodeNUL(entries)
		if err != nil {
			return fmt.Errorf("metadata %s: %w", name, err)
		}
		if err := writePrivate(filepath.Join(dir, name), data); err != nil {
			return err
		}
	}
	for name, data := range m.Files {
		if err := writePrivate(filepath.Join(dir, name), data); err != nil {
			return err
		}
	}
	return nil
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

// readRun reads the run file of a metadata directory (enter needs the nonce).
func readRun(dir string) (map[string]string, error) {
	data, err := os.ReadFile(filepath.Join(dir, "run"))
	if err != nil {
		return nil, err
	}
	run := map[string]string{}
	for _, kv := range decodeNUL(data) {
		k, v, _ := strings.Cut(kv, "=")
		run[k] = v
	}
	return run, nil
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

func boolString(b bool) string { return strconv.FormatBool(b) }
