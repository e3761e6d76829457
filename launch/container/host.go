package container

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// What the container backend needs from the host, and who the container's
// payload runs as.

// systemdRuns says whether systemd is the host's init (sd_booted(3): the
// directory /run/systemd/system exists). Then nspawn registers the machine
// with systemd-machined (machinectl lists it) in its own scope unit;
// otherwise it must neither register nor ask for a scope.
func systemdRuns() bool {
	st, err := os.Stat("/run/systemd/system")
	return err == nil && st.IsDir()
}

// selfExecutable is the claude-sandbox binary that becomes the container's
// init. It runs inside, where only /nix/store is shared with the host, so it
// must be static or linked against libraries in the store.
func selfExecutable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", &launch.HostError{Backend: Name, Reason: "cannot find the claude-sandbox executable: " + err.Error(), Fix: "run claude-sandbox by its path"}
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	if strings.HasSuffix(exe, " (deleted)") {
		return "", &launch.HostError{Backend: Name, Reason: "the running claude-sandbox binary was deleted or replaced", Fix: "run the new claude-sandbox again"}
	}
	interp, err := elfInterpreter(exe)
	if err != nil {
		return "", &launch.HostError{Backend: Name, Reason: fmt.Sprintf("reading %s: %v", exe, err), Fix: "reinstall claude-sandbox"}
	}
	if interp != "" && !strings.HasPrefix(interp, manifest.StoreDir+"/") {
		return "", &launch.HostError{
			Backend: Name,
			Reason:  fmt.Sprintf("%s is linked against the host's C library (%s), which the container cannot see", exe, interp),
			Fix:     "use the claude-sandbox from Nix, or build it static: CGO_ENABLED=0 go build ./cmd/claude-sandbox",
		}
	}
	return exe, nil
}

// elfInterpreter returns the program interpreter (PT_INTERP) a 64-bit
// little-endian ELF file names, or "" for a static one. debug/elf would do
// it, but linking it (with DWARF, zlib and zstd behind it) made every
// launch of every backend pay their package initialisation.
func elfInterpreter(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var header [64]byte
	if _, err := f.ReadAt(header[:], 0); err != nil || string(header[:4]) != "\x7fELF" || header[4] != 2 || header[5] != 1 {
		return "", errors.New("not a 64-bit little-endian ELF executable")
	}
	le := binary.LittleEndian
	phoff, phentsize, phnum := int64(le.Uint64(header[0x20:])), int64(le.Uint16(header[0x36:])), int(le.Uint16(header[0x38:]))
	if phentsize < 56 || phnum > 256 {
		return "", errors.New("malformed ELF program headers")
	}
	const ptInterp = 3
	for i := 0; i < phnum; i++ {
		var ph [56]byte
		if _, err := f.ReadAt(ph[:], phoff+int64(i)*phentsize); err != nil {
			return "", err
		}
		if le.Uint32(ph[0:]) != ptInterp {
			continue
		}
		offset, size := int64(le.Uint64(ph[8:])), le.Uint64(ph[32:])
		if size == 0 || size > 4096 {
			return "", errors.New("malformed ELF interpreter entry")
		}
		interp := make([]byte, size)
		if _, err := f.ReadAt(interp, offset); err != nil {
			return "", err
		}
		return string(bytes.TrimRight(interp, "\x00")), nil
	}
	return "", nil
}

// containerUser is who the payload runs as: the user who ran sudo, so that
// files it creates in the project belong to them.
type containerUser struct {
	UID, GID int
	Name     string
	Home     string
	Groups   []containerGroup // the primary group first
}

type containerGroup struct {
	GID  int
	Name string
}

var containerSafeName = lazyregexp.New(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

// safeContainerName: at most 32 characters, checked apart from the pattern
// (a counted repetition would cost every launch its compilation).
func safeContainerName(s string) bool { return len(s) <= 32 && containerSafeName.MatchString(s) }

// invokingUser reads SUDO_UID/SUDO_GID/SUDO_USER when root was reached
// through sudo, else takes the current user. The user database supplies the
// home directory and supplementary groups; the payload gets them without
// PAM, as setpriv --init-groups would.
func invokingUser(rt *launch.Runtime) (containerUser, error) {
	u := containerUser{UID: os.Getuid(), GID: os.Getgid(), Name: rt.User, Home: rt.Home}
	sudoUID, viaSudo := rt.Getenv("SUDO_UID")
	if rt.EffectiveUID() == 0 && viaSudo && sudoUID != "" {
		uid, err := strconv.Atoi(sudoUID)
		if err != nil || uid < 0 {
			return u, fmt.Errorf("SUDO_UID=%q is not a user id", sudoUID)
		}
		u.UID = uid
		u.Name, _ = rt.Getenv("SUDO_USER")
		u.Home = ""
		gid := -1
		if s, ok := rt.Getenv("SUDO_GID"); ok {
			if g, err := strconv.Atoi(s); err == nil && g >= 0 {
				gid = g
			}
		}
		if pw, err := user.LookupId(strconv.Itoa(uid)); err == nil {
			if u.Name == "" {
				u.Name = pw.Username
			}
			u.Home = pw.HomeDir
			if gid < 0 {
				gid, _ = strconv.Atoi(pw.Gid)
			}
		}
		if gid < 0 {
			gid = uid
		}
		u.GID = gid
	}
	if !safeContainerName(u.Name) {
		u.Name = "user"
		if u.UID == 0 {
			u.Name = "root"
		}
	}
	if !filepath.IsAbs(u.Home) || filepath.Clean(u.Home) == "/" || strings.ContainsAny(u.Home, ":\n") {
		u.Home = filepath.Join("/home", u.Name)
		if u.UID == 0 {
			u.Home = "/root"
		}
	}
	u.Home = filepath.Clean(u.Home)
	u.Groups = containerGroupsOf(u)
	return u, nil
}

// containerGroupsOf lists the user's groups with names (for the container's
// /etc/group), the primary one first.
func containerGroupsOf(u containerUser) []containerGroup {
	gids := []int{u.GID}
	if pw, err := user.LookupId(strconv.Itoa(u.UID)); err == nil {
		if ids, err := pw.GroupIds(); err == nil {
			for _, s := range ids {
				if g, err := strconv.Atoi(s); err == nil && g != u.GID {
					gids = append(gids, g)
				}
			}
		}
	}
	out := make([]containerGroup, 0, len(gids))
	for _, gid := range gids {
		name := ""
		if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
			name = g.Name
		}
		if !safeContainerName(name) {
			name = "g" + strconv.Itoa(gid)
		}
		if gid == u.GID && gid == u.UID && name == "g"+strconv.Itoa(gid) {
			name = u.Name
		}
		out = append(out, containerGroup{GID: gid, Name: name})
	}
	return out
}

// EnvError is an --env name the container backend cannot pass: it would
// reach systemd-nspawn, which runs as root, before the container
// (launch.SteersRoot). A usage error (it unwraps to launch.EnvNameError).
type EnvError struct{ Name string }

func (e *EnvError) Error() string {
	return fmt.Sprintf("--env %s: not passed into a container: systemd-nspawn, which runs as root, would read it first", e.Name)
}
func (e *EnvError) Hint() string {
	return "set it inside the sandbox instead (in the command, or a script in the project)"
}
func (e *EnvError) Unwrap() error { return &launch.EnvNameError{Name: e.Name} }

var errNoContainerProcess = errors.New("the container has no running init")
