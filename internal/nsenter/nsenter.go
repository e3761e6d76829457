// Package nsenter starts a command inside the namespaces of a running
// process, like nsenter(1), from a Go program: a raw clone(2) whose children
// make only system calls prepared beforehand. It owns every //go:nosplit
// function and raw system call of that dance and nothing else: what to run,
// with which environment and filter, is its caller's decision.
package nsenter

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
)

// Two kernel rules shape this. setns(2) into a user namespace refuses a
// multithreaded caller, and every Go process is multithreaded from its
// first instruction (runc and podman enter namespaces from C that runs
// before the Go runtime starts). And after setns(CLONE_NEWPID) a process may
// no longer create threads (kernel/fork.c: CLONE_THREAD needs
// pid_ns_for_children to be the caller's own), so no Go program, this one
// re-exec'd included, can run there: the Go runtime starts threads at once.
//
// So this forks the way the syscall package forks for os/exec: a clone(2)
// whose child runs only raw system calls prepared beforehand. The child
// joins the namespaces, installs the sandbox's seccomp filter, changes
// directory (after setns(CLONE_NEWNS) the working directory is the
// namespace's root; the equivalent of nsenter --wd would leave getcwd(2)
// failing with ENOENT, which breaks Claude Code), and forks the command
// with CLONE_PARENT, so that it is this process's child and the
// intermediate exits at once. The command, the only process left, is a
// member of the sandbox's pid namespace and execs like execvp(3) would.

// The namespaces joined after the owning user namespace, in this order.
// pid goes last but one: it only affects the command forked afterwards.
var nsTypes = []struct {
	name string
	flag int
}{
	{"mnt", unix.CLONE_NEWNS},
	{"ipc", unix.CLONE_NEWIPC},
	{"uts", unix.CLONE_NEWUTS},
	{"net", unix.CLONE_NEWNET},
	{"cgroup", unix.CLONE_NEWCGROUP},
	{"pid", unix.CLONE_NEWPID},
}

const (
	maxCandidates = 64
	maxDirs       = 3
)

// nsEnter is everything the forked children need; after the fork they may
// only read this and make raw system calls.
type nsEnter struct {
	nsFD   [8]uintptr
	nsFlag [8]uintptr
	nsName [8]string // for error messages, read by the parent only
	nns    int

	dirs  [maxDirs]*byte // working directory candidates, in order
	ndir  int
	dir   int // the one the intermediate changed to
	cands [maxCandidates]*byte
	ncand int
	argv  **byte
	envv  **byte
	fprog *unix.SockFprog // nil: no filter
	// dropCaps: clear every capability before the exec, with no_new_privs
	// set, so that not even root's exec gets them back.
	dropCaps bool
	capHdr   [2]uint32 // _LINUX_CAPABILITY_VERSION_3, this thread
	capData  [6]uint32 // effective, permitted, inheritable ×2: all zero

	// listen: make a TCP socket listening on laddr in the joined network
	// namespace; the intermediate shares this process's descriptor table
	// (CLONE_FILES), so the socket is this process's, its number reported.
	listen bool
	laddr  unix.RawSockaddrInet4
	one    int32
	link   [linkMsgLen]byte        // RTM_NEWLINK for lo (see loopbackGSO)
	kernel unix.RawSockaddrNetlink // where link goes
	// innerUser: the last namespace joined is the program's own user
	// namespace, inside the one owning the others.
	innerUser bool

	pipe    uintptr       // write end: reports to the parent
	mask    unix.Sigset_t // the signal mask to exec with
	dfl     [4]uint64     // a zero struct sigaction: SIG_DFL, no flags, empty mask
	message [3]uint32
}

// Messages on the pipe: {step, errno, 0} for a failure, {msgForked, pid,
// directory index} when the command was forked.
const (
	stepNoNewPrivs   = 100
	stepSeccomp      = 101
	stepChdir        = 102
	stepFork         = 103
	stepExec         = 104
	stepCapabilities = 105
	stepSocket       = 106
	stepBind         = 107
	stepListen       = 108
	msgForked        = 200
	msgListening     = 201
)

// The steps an Error names that callers tell apart.
const (
	StepExec = "starting the command"
	StepFork = "forking into its pid namespace"
)

// forkEnter forks the intermediate child. In the children it runs without
// a Go runtime behind it: no allocation, no stack growth, no calls but raw
// system calls and these nosplit functions.
//
// Both children share this process's memory and are vforks (vforkFlags,
// where rawVfork can: see vfork_linux_amd64.s): this thread waits while
// the intermediate runs, which waits while the command runs until its
// exec. A copying fork of a Go process is slow, and its cost goes on
// after it: every page the process writes afterwards faults once to
// undo the copy-on-write marking, a few milliseconds per join (measured:
// 15 ms for a join and wait of /bin/true against os/exec's 4.9 ms).
// Each child runs in a function of its own (a frame below this one) and
// never returns; what the intermediate needs after its own vfork it
// keeps in j, which the command does not write.
//
//go:norace
//go:nocheckptr
//go:nosplit
func forkEnter(j *nsEnter) (pid uintptr, errno syscall.Errno) {
	flags := uintptr(syscall.SIGCHLD) | vforkFlags
	if j.listen {
		flags |= syscall.CLONE_FILES
	}
	r1, e := rawVfork(syscall.SYS_CLONE, flags, 0, 0)
	if e != 0 || r1 != 0 {
		// The parent: back at once, using only rawVfork's results,
		// written after the child was gone.
		return r1, e
	}
	intermediate(j)
	return 0, 0 // not reached
}

// intermediate joins the namespaces, makes the listening socket, installs
// the filter, changes directory and forks the command.
//
//go:norace
//go:nocheckptr
//go:nosplit
func intermediate(j *nsEnter) {
	// The program's own user namespace last, after the socket: the
	// loopback's packet size is set with the rights of the user namespace
	// that owns the network namespace.
	last := j.nns
	if j.innerUser {
		last--
	}
	for i := 0; i < last; i++ {
		if _, _, e := syscall.RawSyscall(unix.SYS_SETNS, j.nsFD[i], j.nsFlag[i], 0); e != 0 {
			report(j, uint32(i), uint32(e), 0)
		}
	}
	if j.listen {
		fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if e != 0 {
			report(j, stepSocket, uint32(e), 0)
		}
		tell(j, msgListening, uint32(fd), 0)
		syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, uintptr(unsafe.Pointer(&j.one)), 4, 0)
		if _, _, e = syscall.RawSyscall(syscall.SYS_BIND, fd, uintptr(unsafe.Pointer(&j.laddr)), unsafe.Sizeof(j.laddr)); e != 0 {
			report(j, stepBind, uint32(e), 0)
		}
		if _, _, e = syscall.RawSyscall(syscall.SYS_LISTEN, fd, 512, 0); e != 0 {
			report(j, stepListen, uint32(e), 0)
		}
		// Best effort, unchecked: larger packets on the sandbox's
		// loopback (see loopbackGSO).
		if nl, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE); e == 0 {
			syscall.RawSyscall6(syscall.SYS_SENDTO, nl, uintptr(unsafe.Pointer(&j.link[0])), uintptr(len(j.link)), 0,
				uintptr(unsafe.Pointer(&j.kernel)), unsafe.Sizeof(j.kernel))
			syscall.RawSyscall(syscall.SYS_CLOSE, nl, 0, 0)
		}
	}
	if j.innerUser {
		if _, _, e := syscall.RawSyscall(unix.SYS_SETNS, j.nsFD[last], j.nsFlag[last], 0); e != 0 {
			report(j, uint32(last), uint32(e), 0)
		}
	}
	if j.fprog != nil || j.dropCaps {
		if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0); e != 0 {
			report(j, stepNoNewPrivs, uint32(e), 0)
		}
	}
	if j.fprog != nil {
		if _, _, e := syscall.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(j.fprog))); e != 0 {
			report(j, stepSeccomp, uint32(e), 0)
		}
	}
	if j.dropCaps {
		if _, _, e := syscall.RawSyscall(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(&j.capHdr[0])), uintptr(unsafe.Pointer(&j.capData[0])), 0); e != 0 {
			report(j, stepCapabilities, uint32(e), 0)
		}
	}
	var e syscall.Errno
	for j.dir = 0; j.dir < j.ndir; j.dir++ {
		if _, _, e = syscall.RawSyscall(syscall.SYS_CHDIR, uintptr(unsafe.Pointer(j.dirs[j.dir])), 0, 0); e == 0 {
			break
		}
	}
	if j.dir == j.ndir {
		report(j, stepChdir, uint32(e), 0)
	}
	r1, e := rawVfork(syscall.SYS_CLONE, uintptr(unix.CLONE_PARENT|syscall.SIGCHLD)|vforkFlags, 0, 0)
	if e != 0 {
		report(j, stepFork, uint32(e), 0)
	}
	if r1 == 0 {
		command(j)
	}
	report(j, msgForked, uint32(r1), uint32(j.dir))
}

// command is the command's process, a member of the sandbox's pid
// namespace: it execs like execvp(3) would. Handlers are the Go
// runtime's, copied: back to the defaults before any signal can be
// delivered again.
//
//go:norace
//go:nocheckptr
//go:nosplit
func command(j *nsEnter) {
	for sig := uintptr(1); sig <= 64; sig++ {
		if sig != uintptr(syscall.SIGKILL) && sig != uintptr(syscall.SIGSTOP) {
			syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, sig, uintptr(unsafe.Pointer(&j.dfl[0])), 0, 8, 0, 0)
		}
	}
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(&j.mask)), 0, 8, 0, 0)
	e := syscall.ENOENT
	for i := 0; i < j.ncand; i++ {
		_, _, err := syscall.RawSyscall(syscall.SYS_EXECVE, uintptr(unsafe.Pointer(j.cands[i])),
			uintptr(unsafe.Pointer(j.argv)), uintptr(unsafe.Pointer(j.envv)))
		// Like execvp: a missing or unusable candidate means try the next.
		if err != syscall.ENOENT && err != syscall.EACCES && err != syscall.ENOTDIR {
			e = err
			break
		}
		if err == syscall.EACCES {
			e = err
		}
	}
	report(j, stepExec, uint32(e), 0)
}

// tell writes a message to the parent.
//
//go:norace
//go:nocheckptr
//go:nosplit
func tell(j *nsEnter, a, b, c uint32) {
	j.message[0], j.message[1], j.message[2] = a, b, c
	syscall.RawSyscall(syscall.SYS_WRITE, j.pipe, uintptr(unsafe.Pointer(&j.message[0])), unsafe.Sizeof(j.message))
}

// report writes a message to the parent and exits.
//
//go:norace
//go:nocheckptr
//go:nosplit
func report(j *nsEnter, a, b, c uint32) {
	j.message[0], j.message[1], j.message[2] = a, b, c
	syscall.RawSyscall(syscall.SYS_WRITE, j.pipe, uintptr(unsafe.Pointer(&j.message[0])), unsafe.Sizeof(j.message))
	code := uintptr(127)
	if a == msgForked {
		code = 0
	}
	for {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, code, 0, 0)
	}
}

// Error is a failure at one step of entering.
type Error struct {
	Step string // StepExec, StepFork, or what else failed
	Err  error
}

func (e *Error) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Options are what Start needs.
type Options struct {
	Target int      // the process whose namespaces are joined
	Argv   []string // the command; Argv[0] is searched in Path unless it holds a slash
	Env    []string
	Path   string // the PATH inside, searched as execvp(3) does
	// Dirs are the working directories to try inside, in order (at most
	// three; "" counts as /).
	Dirs   []string
	Filter []unix.SockFilter // a seccomp filter installed before the exec; nil: none
	// DropCapabilities clears the command's capabilities (and sets
	// no_new_privs): for a root caller, whose command would otherwise keep
	// all of root's in the sandbox it joins.
	DropCapabilities bool
	// ListenPort, when not zero, asks for a TCP socket listening on
	// 127.0.0.1:ListenPort in the joined network namespace, made before
	// the command starts (Process.Listener): what ListenLoopback makes,
	// without a fork of its own.
	ListenPort int
}

// Process is a command started inside the namespaces. It is this
// process's child: wait for it with wait4(2).
type Process struct {
	Pid int
	Dir int // the index in Options.Dirs of the directory it started in
	// Listener is the socket Options.ListenPort asked for (nil if none).
	Listener *os.File
}

// Start starts o.Argv inside the namespaces of process o.Target.
func Start(o Options) (*Process, error) {
	argv, env, prog := o.Argv, o.Env, o.Filter
	if len(argv) == 0 {
		return nil, &Error{Step: StepExec, Err: errors.New("no command")}
	}
	if len(o.Dirs) == 0 {
		o.Dirs = []string{"/"}
	}
	if len(o.Dirs) > maxDirs {
		return nil, &Error{Step: "changing directory", Err: fmt.Errorf("%d directories to try, at most %d", len(o.Dirs), maxDirs)}
	}
	target := o.Target
	j := &nsEnter{dropCaps: o.DropCapabilities}
	if o.ListenPort != 0 {
		if o.ListenPort < 0 || o.ListenPort > 65535 {
			return nil, &Error{Step: stepName(stepSocket), Err: fmt.Errorf("port %d out of range", o.ListenPort)}
		}
		j.listen, j.one = true, 1
		j.laddr = loopbackAddr(o.ListenPort)
		linkMessage(&j.link)
		j.kernel.Family = unix.AF_NETLINK
	}
	j.capHdr[0] = unix.LINUX_CAPABILITY_VERSION_3
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	// Unprivileged bwrap nests two user namespaces: the sandbox's mount,
	// pid and other namespaces belong to the outer one (where the user is
	// mapped to root, to mount /dev/pts), the program runs in an inner one
	// mapping the user back to their own uid. Joining the program's user
	// namespace first, as nsenter -a does, leaves no right to join the
	// others (EPERM). So: the owner of its mount namespace first, then the
	// namespaces, then the program's own user namespace.
	add := func(name string, flag int, f *os.File) {
		files = append(files, f)
		j.nsFD[j.nns], j.nsFlag[j.nns], j.nsName[j.nns] = f.Fd(), uintptr(flag), name
		j.nns++
	}
	open := func(name string) (*os.File, bool, error) {
		theirs := fmt.Sprintf("/proc/%d/ns/%s", target, name)
		same, err := proc.SameNamespace(theirs, "/proc/self/ns/"+name)
		if err != nil {
			return nil, false, err
		}
		if same {
			// Joining one's own namespace fails with EINVAL (and bwrap run
			// by root makes no user namespace at all).
			return nil, true, nil
		}
		f, err := os.Open(theirs)
		return f, false, err
	}
	mnt, same, err := open("mnt")
	if err != nil || same {
		if err == nil {
			err = errors.New("it shares this process's mount namespace, which a sandbox never does")
		}
		return nil, &Error{Step: "opening its mount namespace", Err: err}
	}
	ownerFD, err := unix.IoctlRetInt(int(mnt.Fd()), unix.NS_GET_USERNS)
	var owner *os.File
	if err == nil {
		owner = os.NewFile(uintptr(ownerFD), "userns")
		if same, _ := proc.SameNamespace(fmt.Sprintf("/proc/self/fd/%d", ownerFD), "/proc/self/ns/user"); same {
			owner.Close()
			owner = nil
		} else {
			add("user (owner)", unix.CLONE_NEWUSER, owner)
		}
	}
	add("mnt", unix.CLONE_NEWNS, mnt)
	for _, ns := range nsTypes[1:] {
		f, same, err := open(ns.name)
		if errors.Is(err, os.ErrNotExist) && ns.name == "cgroup" {
			continue // a kernel without cgroup namespaces
		}
		if err != nil {
			return nil, &Error{Step: "opening its " + ns.name + " namespace", Err: err}
		}
		if !same {
			add(ns.name, ns.flag, f)
		}
	}
	user, same, err := open("user")
	if err != nil {
		return nil, &Error{Step: "opening its user namespace", Err: err}
	}
	if !same {
		if owner != nil {
			if s, _ := proc.SameNamespace(fmt.Sprintf("/proc/self/fd/%d", user.Fd()), fmt.Sprintf("/proc/self/fd/%d", owner.Fd())); s {
				user.Close()
				user = nil
			}
		}
		if user != nil {
			add("user", unix.CLONE_NEWUSER, user)
			j.innerUser = true
		}
	}

	var keep [][]byte
	cstr := func(s string) *byte {
		b := append([]byte(s), 0)
		keep = append(keep, b)
		return &b[0]
	}
	for i, d := range o.Dirs {
		if d == "" {
			d = "/"
		}
		j.dirs[i] = cstr(d)
	}
	j.ndir = len(o.Dirs)
	for _, c := range execvpCandidates(argv[0], o.Path) {
		if j.ncand == maxCandidates {
			break
		}
		j.cands[j.ncand] = cstr(c)
		j.ncand++
	}
	argvp, err := syscall.SlicePtrFromStrings(argv)
	if err != nil {
		return nil, &Error{Step: "arguments", Err: err}
	}
	envp, err := syscall.SlicePtrFromStrings(env)
	if err != nil {
		return nil, &Error{Step: "environment", Err: err}
	}
	j.argv, j.envv = &argvp[0], &envp[0]
	if len(prog) > 0 {
		j.fprog = &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, &Error{Step: "pipe", Err: err}
	}
	rd, wr := os.NewFile(uintptr(p[0]), "enter-reports"), os.NewFile(uintptr(p[1]), "enter-reports")
	defer rd.Close()
	j.pipe = wr.Fd()

	// Every signal is blocked around the fork: a handler must not run in
	// the children, which have no Go runtime behind them.
	runtime.LockOSThread()
	var all unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^all.Val[i] // all ones, whatever the word size
	}
	syscall.ForkLock.Lock()
	_ = unix.PthreadSigmask(unix.SIG_SETMASK, &all, &j.mask)
	pid, errno := forkEnter(j)
	_ = unix.PthreadSigmask(unix.SIG_SETMASK, &j.mask, nil)
	syscall.ForkLock.Unlock()
	runtime.UnlockOSThread()
	runtime.KeepAlive(j)
	runtime.KeepAlive(keep)
	runtime.KeepAlive(argvp)
	runtime.KeepAlive(envp)
	runtime.KeepAlive(prog)
	runtime.KeepAlive(files)
	if errno != 0 {
		wr.Close()
		return nil, &Error{Step: "fork", Err: errno}
	}
	var ws unix.WaitStatus
	for {
		// The intermediate exits at once. Only then is the pipe's write
		// end closed here: it may share this process's descriptors.
		if _, err := unix.Wait4(int(pid), &ws, 0, nil); err != unix.EINTR {
			break
		}
	}
	wr.Close()

	// Read until every writer is gone: the intermediate's report, then EOF
	// when the command's exec closed its copy, or the command's failure.
	var got *Process
	var listener *os.File
	var failure error
	buf := make([]byte, 12)
	for {
		n, err := io.ReadFull(rd, buf)
		if n == 0 || err != nil {
			break
		}
		a := *(*uint32)(unsafe.Pointer(&buf[0]))
		b := *(*uint32)(unsafe.Pointer(&buf[4]))
		c := *(*uint32)(unsafe.Pointer(&buf[8]))
		switch {
		case a == msgForked:
			got = &Process{Pid: int(b), Dir: int(c), Listener: listener}
		case a == msgListening:
			listener = os.NewFile(uintptr(b), fmt.Sprintf("127.0.0.1:%d in the sandbox", o.ListenPort))
		case int(a) < j.nns:
			failure = &Error{Step: "joining its " + j.nsName[a] + " namespace", Err: syscall.Errno(b)}
		case a == stepNoNewPrivs, a == stepSeccomp:
			failure = &Error{Step: "installing its seccomp filter", Err: syscall.Errno(b)}
		case a == stepCapabilities:
			failure = &Error{Step: "dropping capabilities", Err: syscall.Errno(b)}
		case a == stepSocket, a == stepBind, a == stepListen:
			failure = &Error{Step: stepName(a), Err: syscall.Errno(b)}
		case a == stepChdir:
			failure = &Error{Step: "changing directory", Err: syscall.Errno(b)}
		case a == stepFork:
			failure = &Error{Step: StepFork, Err: syscall.Errno(b)}
		case a == stepExec:
			failure = &Error{Step: StepExec, Err: fmt.Errorf("%s: %w", argv[0], syscall.Errno(b))}
		}
	}
	if failure != nil {
		if listener != nil {
			listener.Close()
		}
		if got != nil {
			_, _ = unix.Wait4(got.Pid, &ws, 0, nil)
		}
		return nil, failure
	}
	if got == nil {
		if listener != nil {
			listener.Close()
		}
		return nil, &Error{Step: "fork", Err: fmt.Errorf("the helper process ended with %v", ws)}
	}
	return got, nil
}

// execvpCandidates lists where execvp would look for name.
func execvpCandidates(name, path string) []string {
	if name == "" {
		return nil
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' {
			return []string{name}
		}
	}
	var out []string
	start := 0
	for i := 0; i <= len(path); i++ {
		if i == len(path) || path[i] == ':' {
			dir := path[start:i]
			if dir == "" {
				dir = "."
			}
			out = append(out, dir+"/"+name)
			start = i + 1
		}
	}
	return out
}

// stepName names a step of making the listening socket.
func stepName(step uint32) string {
	switch step {
	case stepBind:
		return "binding 127.0.0.1"
	case stepListen:
		return "listen"
	}
	return "socket"
}
