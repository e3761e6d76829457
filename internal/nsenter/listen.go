package nsenter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
)

// ListenLoopback makes a TCP socket listening on 127.0.0.1:port inside the
// network namespace of process target and returns it: a door on the
// sandbox's own loopback that this process (or one it hands the socket
// to) serves from outside. Nothing runs inside the sandbox for it.
//
// A child made by a raw clone(2) joins the namespace — the user namespace
// owning it first, where that is not this process's (unprivileged bwrap):
// joining a user namespace needs a single-threaded caller — creates the
// socket there, and sends it back over a socket pair (SCM_RIGHTS). The
// child also lets that loopback carry large packets (loopbackGSO).
func ListenLoopback(target, port int) (*os.File, error) {
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("port %d out of range", port)
	}
	l := &nsListen{}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	netns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", target))
	if err != nil {
		return nil, &Error{Step: "opening its network namespace", Err: err}
	}
	files = append(files, netns)
	if same, err := proc.SameNamespace(fmt.Sprintf("/proc/self/fd/%d", netns.Fd()), "/proc/self/ns/net"); err != nil || same {
		if err == nil {
			err = errors.New("it shares this process's network namespace, which a sandbox never does")
		}
		return nil, &Error{Step: "opening its network namespace", Err: err}
	}
	if ownerFD, err := unix.IoctlRetInt(int(netns.Fd()), unix.NS_GET_USERNS); err == nil {
		owner := os.NewFile(uintptr(ownerFD), "userns")
		files = append(files, owner)
		if same, _ := proc.SameNamespace(fmt.Sprintf("/proc/self/fd/%d", ownerFD), "/proc/self/ns/user"); !same {
			l.userFD = owner.Fd()
		}
	}
	l.netFD = netns.Fd()

	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours := os.NewFile(uintptr(pair[0]), "listen-reply")
	theirs := os.NewFile(uintptr(pair[1]), "listen-reply")
	files = append(files, ours, theirs)
	l.reply = theirs.Fd()

	l.addr = loopbackAddr(port)
	l.one = 1
	linkMessage(&l.link)
	l.kernel.Family = unix.AF_NETLINK
	l.cmsg = unix.UnixRights(0)
	l.iov = unix.Iovec{Base: &l.payload[0]}
	l.iov.SetLen(len(l.payload))
	l.msg.Iov = &l.iov
	l.msg.SetIovlen(1)
	l.msg.Control = &l.cmsg[0]
	l.msg.SetControllen(len(l.cmsg))
	l.fdSlot = (*int32)(unsafe.Pointer(&l.cmsg[unix.CmsgLen(0)]))

	runtime.LockOSThread()
	var all, old unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^all.Val[i]
	}
	syscall.ForkLock.Lock()
	_ = unix.PthreadSigmask(unix.SIG_SETMASK, &all, &old)
	pid, errno := forkListen(l)
	_ = unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	syscall.ForkLock.Unlock()
	runtime.UnlockOSThread()
	runtime.KeepAlive(l)
	if errno != 0 {
		return nil, &Error{Step: "fork", Err: errno}
	}
	var ws unix.WaitStatus
	for {
		if _, err := unix.Wait4(int(pid), &ws, 0, nil); err != unix.EINTR {
			break
		}
	}
	theirs.Close()
	files = files[:len(files)-1]

	buf := make([]byte, 8)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(int(ours.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, &Error{Step: "receiving the socket", Err: err}
	}
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err == nil && len(msgs) == 1 {
			if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
				return os.NewFile(uintptr(fds[0]), fmt.Sprintf("127.0.0.1:%d in the sandbox", port)), nil
			}
		}
		return nil, &Error{Step: "receiving the socket", Err: errors.New("no descriptor in the reply")}
	}
	if n == 8 {
		step := *(*uint32)(unsafe.Pointer(&buf[0]))
		e := syscall.Errno(*(*uint32)(unsafe.Pointer(&buf[4])))
		return nil, &Error{Step: listenStep(step), Err: e}
	}
	return nil, &Error{Step: "making the socket", Err: fmt.Errorf("the helper process ended with %v", ws)}
}

// listenStep names a step a ListenLoopback child reports failing.
func listenStep(step uint32) string {
	switch step {
	case 1:
		return "joining the user namespace owning its network namespace"
	case 2:
		return "joining its network namespace"
	case 3:
		return "socket"
	case 4:
		return "setsockopt"
	case 5:
		return "binding 127.0.0.1"
	case 6:
		return "listen"
	}
	return "sending the socket"
}

// nsListen is everything the child needs, prepared before the fork.
type nsListen struct {
	userFD, netFD uintptr // userFD 0: no user namespace to join
	reply         uintptr
	addr          unix.RawSockaddrInet4
	one           int32
	msg           unix.Msghdr
	iov           unix.Iovec
	payload       [8]byte
	cmsg          []byte
	fdSlot        *int32
	link          [linkMsgLen]byte        // RTM_NEWLINK for lo (see loopbackGSO)
	kernel        unix.RawSockaddrNetlink // where link goes
}

// loopbackGSO is the largest packet TCP hands the sandbox's loopback
// (IPv4 and IPv6 "BIG TCP"; the kernel's default is 64 KiB and its limit
// for lo 512 KiB). Every byte a sandbox downloads crosses that loopback,
// from the proxy to the client; in 64 KiB packets the per-packet work
// (the receiver's TCP processing and wake-up, which loopback does in the
// sender's context) is most of what the proxy's second hop costs: with
// 256 KiB, and the proxy writing from large buffers, a tunnel measured
// 0.61x -> 0.8x of a direct download. IPv6's limit can change since Linux
// 5.19, IPv4's since 6.3; an older kernel ignores or refuses the request,
// which is not checked.
const loopbackGSO = 256 << 10

const linkMsgLen = unix.NLMSG_HDRLEN + unix.SizeofIfInfomsg + 2*8

// linkMessage fills m with the request that sets lo's GSO limits.
func linkMessage(m *[linkMsgLen]byte) {
	ne := binary.NativeEndian
	ne.PutUint32(m[0:], linkMsgLen)
	ne.PutUint16(m[4:], unix.RTM_NEWLINK)
	ne.PutUint16(m[6:], unix.NLM_F_REQUEST)
	info := m[unix.NLMSG_HDRLEN:]
	info[0] = unix.AF_UNSPEC
	ne.PutUint32(info[4:], 1) // lo's index in every network namespace
	attrs := info[unix.SizeofIfInfomsg:]
	for i, typ := range []uint16{unix.IFLA_GSO_MAX_SIZE, unix.IFLA_GSO_IPV4_MAX_SIZE} {
		a := attrs[8*i:]
		ne.PutUint16(a[0:], 8)
		ne.PutUint16(a[2:], typ)
		ne.PutUint32(a[4:], loopbackGSO)
	}
}

// forkListen forks the child; in it, only raw system calls and writes to
// memory prepared beforehand. The child is a vfork sharing this process's
// memory where rawVfork can (see forkEnter): a copying fork of a Go
// process costs it a fault on every page it writes afterwards.
//
//go:norace
//go:nocheckptr
//go:nosplit
func forkListen(l *nsListen) (pid uintptr, errno syscall.Errno) {
	r1, e := rawVfork(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD)|vforkFlags, 0, 0)
	if e != 0 || r1 != 0 {
		// The parent: back at once, using only rawVfork's results.
		return r1, e
	}
	listenChild(l)
	return 0, 0 // not reached
}

// listenChild joins the namespaces, makes the socket, sends it and exits.
//
//go:norace
//go:nocheckptr
//go:nosplit
func listenChild(l *nsListen) {
	var e syscall.Errno
	if l.userFD != 0 {
		if _, _, e = syscall.RawSyscall(unix.SYS_SETNS, l.userFD, unix.CLONE_NEWUSER, 0); e != 0 {
			listenFailed(l, 1, e)
		}
	}
	if _, _, e = syscall.RawSyscall(unix.SYS_SETNS, l.netFD, unix.CLONE_NEWNET, 0); e != 0 {
		listenFailed(l, 2, e)
	}
	fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		listenFailed(l, 3, e)
	}
	if _, _, e = syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, uintptr(unsafe.Pointer(&l.one)), 4, 0); e != 0 {
		listenFailed(l, 4, e)
	}
	if _, _, e = syscall.RawSyscall(syscall.SYS_BIND, fd, uintptr(unsafe.Pointer(&l.addr)), unsafe.Sizeof(l.addr)); e != 0 {
		listenFailed(l, 5, e)
	}
	if _, _, e = syscall.RawSyscall(syscall.SYS_LISTEN, fd, 512, 0); e != 0 {
		listenFailed(l, 6, e)
	}
	// Best effort, unchecked: larger packets on the sandbox's loopback
	// (see loopbackGSO).
	if nl, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE); e == 0 {
		syscall.RawSyscall6(syscall.SYS_SENDTO, nl, uintptr(unsafe.Pointer(&l.link[0])), uintptr(len(l.link)), 0,
			uintptr(unsafe.Pointer(&l.kernel)), unsafe.Sizeof(l.kernel))
		syscall.RawSyscall(syscall.SYS_CLOSE, nl, 0, 0)
	}
	*l.fdSlot = int32(fd)
	if _, _, e = syscall.RawSyscall(syscall.SYS_SENDMSG, l.reply, uintptr(unsafe.Pointer(&l.msg)), 0); e != 0 {
		listenFailed(l, 7, e)
	}
	for {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	}
}

// listenFailed reports a failed step to the parent and exits.
//
//go:norace
//go:nocheckptr
//go:nosplit
func listenFailed(l *nsListen, step uint32, e syscall.Errno) {
	*(*uint32)(unsafe.Pointer(&l.payload[0])) = step
	*(*uint32)(unsafe.Pointer(&l.payload[4])) = uint32(e)
	syscall.RawSyscall(syscall.SYS_WRITE, l.reply, uintptr(unsafe.Pointer(&l.payload[0])), 8)
	for {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 1, 0, 0)
	}
}

// loopbackAddr is 127.0.0.1:port for bind(2).
func loopbackAddr(port int) unix.RawSockaddrInet4 {
	a := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: [4]byte{127, 0, 0, 1}}
	// sin_port is in network byte order.
	p := (*[2]byte)(unsafe.Pointer(&a.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	return a
}
