// Package proc reads what the kernel says about processes in /proc (their
// children, status fields, environment and namespaces), waits for a
// process to exit through a pidfd, and turns wait statuses into exit codes.
// It is the only place that parses /proc. It signals a process only through
// a Process handle, whose pidfd cannot name a recycled pid.
package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrExited is a process that has exited, whether or not its parent has
// reaped it yet.
var ErrExited = errors.New("the process has exited")

// Stat is what a launcher needs of /proc/PID/stat.
type Stat struct {
	State     byte   // R, S, D, T, Z (exited, not reaped), X …
	PPID      int    // field 4
	StartTime uint64 // field 22: clock ticks after boot; with the pid, it names one process
}

// ReadStat parses /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	return parseStat(data)
}

func parseStat(data []byte) (Stat, error) {
	// The command name (field 2) may hold spaces and parentheses: the
	// fields that follow start after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return Stat{}, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return Stat{}, errors.New("malformed /proc stat")
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return Stat{}, fmt.Errorf("malformed /proc stat: %w", err)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("malformed /proc stat: %w", err)
	}
	return Stat{State: f[0][0], PPID: ppid, StartTime: start}, nil
}

// Exited says whether a process in this state has ended.
func (s Stat) Exited() bool { return s.State == 'Z' || s.State == 'X' }

// StartTime returns the start time of a running process; ErrExited once it
// has exited, even before its parent reaps it.
func StartTime(pid int) (uint64, error) {
	st, err := ReadStat(pid)
	if err != nil {
		return 0, err
	}
	if st.Exited() {
		return 0, ErrExited
	}
	return st.StartTime, nil
}

// Running says whether pid is still the process that started at start.
func Running(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	got, err := StartTime(pid)
	return err == nil && got == start
}

// Children lists the direct children of a process, oldest first.
func Children(pid int) []int {
	out, ok := childrenFromTasks(pid)
	if !ok {
		out = childrenByScan(pid)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, _ := ReadStat(out[i])
		b, _ := ReadStat(out[j])
		return a.StartTime < b.StartTime
	})
	return out
}

// childrenFromTasks reads /proc/PID/task/TID/children for every thread:
// each file lists the children that thread created, so a multithreaded
// parent's are spread over them. ok is false where the kernel lacks them
// (CONFIG_PROC_CHILDREN).
func childrenFromTasks(pid int) (out []int, ok bool) {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		ok = true
		for _, field := range strings.Fields(string(data)) {
			if n, err := strconv.Atoi(field); err == nil {
				out = append(out, n)
			}
		}
	}
	return out, ok
}

// childrenByScan finds the children by reading every process's parent: a
// walk of all of /proc, for kernels without the children files.
func childrenByScan(parent int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := ReadStat(pid); err == nil && st.PPID == parent {
			out = append(out, pid)
		}
	}
	return out
}

// maxEnviron bounds /proc/PID/environ: the kernel keeps a process's
// arguments and environment within a quarter of its stack limit, which an
// unlimited stack leaves unbounded.
const maxEnviron = 16 << 20

// Environ reads a process's initial environment (NAME=value entries).
func Environ(pid int) ([]string, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxEnviron+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxEnviron {
		return nil, fmt.Errorf("the environment of process %d is larger than %d MiB", pid, maxEnviron>>20)
	}
	var env []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if bytes.IndexByte(kv, '=') > 0 {
			env = append(env, string(kv))
		}
	}
	return env, nil
}

// Status is what a launcher needs of /proc/PID/status.
type Status struct {
	UID, GID int    // real ids
	Groups   []int  // supplementary groups
	CapBnd   uint64 // the capability bounding set
}

// ReadStatus parses /proc/PID/status.
func ReadStatus(pid int) (Status, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return Status{}, err
	}
	s := Status{UID: -1, GID: -1}
	capBnd := false
	for _, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value)
		switch {
		case key == "Uid" && len(fields) > 0:
			s.UID, _ = strconv.Atoi(fields[0])
		case key == "Gid" && len(fields) > 0:
			s.GID, _ = strconv.Atoi(fields[0])
		case key == "Groups":
			for _, f := range fields {
				if g, err := strconv.Atoi(f); err == nil {
					s.Groups = append(s.Groups, g)
				}
			}
		case key == "CapBnd" && len(fields) > 0:
			if s.CapBnd, err = strconv.ParseUint(fields[0], 16, 64); err != nil {
				return Status{}, fmt.Errorf("/proc/%d/status: CapBnd: %w", pid, err)
			}
			capBnd = true
		}
	}
	if s.UID < 0 || s.GID < 0 || !capBnd {
		return Status{}, fmt.Errorf("/proc/%d/status: no Uid, Gid or CapBnd", pid)
	}
	return s, nil
}

// SameNamespace says whether two namespace files (/proc/PID/ns/NAME, or an
// open namespace's /proc/self/fd/N) name the same namespace.
func SameNamespace(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}

// SharesNamespace says whether process pid is in this process's namespace
// of a kind ("mnt", "pid", …).
func SharesNamespace(pid int, kind string) (bool, error) {
	return SameNamespace("/proc/"+strconv.Itoa(pid)+"/ns/"+kind, "/proc/self/ns/"+kind)
}

// Process is a handle on one process, through a pidfd: signals sent and
// waits made through it reach that process, never a later one that reused
// its pid.
type Process struct {
	PID int
	fd  int
}

// Open takes a handle on pid if it is still the process that started at
// start; ErrExited when it is not.
func Open(pid int, start uint64) (*Process, error) {
	if pid <= 0 {
		return nil, ErrExited
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, ErrExited
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// Checked after opening: the descriptor names whatever had the pid
	// then, which is the recorded process only if it is still running.
	if !Running(pid, start) {
		unix.Close(fd)
		return nil, ErrExited
	}
	return &Process{PID: pid, fd: fd}, nil
}

// Fd is the process's pidfd, open as long as this process runs (a handle
// kept for the life of its holder).
func (p *Process) Fd() int { return p.fd }

// Signal sends sig to the process.
func (p *Process) Signal(sig unix.Signal) error {
	return unix.PidfdSendSignal(p.fd, sig, nil, 0)
}

// Wait waits up to d (or until ctx ends) for the process to exit, and says
// whether it did.
func (p *Process) Wait(ctx context.Context, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		// Look at ctx now and then.
		if WaitPidfd(p.fd, min(max(time.Until(deadline), 0), 100*time.Millisecond)) {
			return true
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
	}
}

// WaitPidfd waits up to timeout (forever when negative) for the process
// behind a pidfd to exit, and says whether it did.
func WaitPidfd(fd int, timeout time.Duration) bool {
	ms := -1
	if timeout >= 0 {
		ms = int(timeout / time.Millisecond)
	}
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}

// PIDNamespaceMembers lists the processes in init's pid namespace other
// than init itself (a walk of /proc: the kernel lists a namespace's
// members nowhere else).
func PIDNamespaceMembers(init int) []int {
	ns, err := os.Readlink("/proc/" + strconv.Itoa(init) + "/ns/pid")
	if err != nil {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == init {
			continue
		}
		if theirs, err := os.Readlink("/proc/" + e.Name() + "/ns/pid"); err != nil || theirs != ns {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// Close releases the handle.
func (p *Process) Close() { unix.Close(p.fd) }

// ExitCode is the status a shell reports for a wait status: the exit
// status, or 128 plus the signal that ended the process.
func ExitCode(ws unix.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return 1
}

// ExitCodeOf is ExitCode for the error of exec.Cmd's Wait; ok is false for
// an error that is not a process's exit.
func ExitCodeOf(err error) (code int, ok bool) {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return 0, false
	}
	// os/exec reports the syscall package's WaitStatus, not unix's.
	if ws, isWS := ee.Sys().(syscall.WaitStatus); isWS {
		return ExitCode(unix.WaitStatus(ws)), true
	}
	return ee.ExitCode(), true
}

// SignalOf returns the signal that ended a process, from exec.Cmd's Wait
// error, or 0.
func SignalOf(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return int(ws.Signal())
		}
	}
	return 0
}
