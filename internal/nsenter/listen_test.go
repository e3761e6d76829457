package nsenter

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// A socket made on another network namespace's loopback, served here:
// what a process inside connects to on 127.0.0.1 reaches this process,
// and nothing on this namespace's loopback listens on it.
func TestListenLoopback(t *testing.T) {
	unshare := testenv.RequireProgram(t, "unshare")
	nsenter := testenv.RequireProgram(t, "nsenter")
	for _, tc := range []struct {
		name string
		args []string // how the target is made
		join []string // nsenter's namespace flags to connect from inside
	}{
		// Unprivileged-style: its network namespace owned by a user
		// namespace of its own, as bwrap makes it.
		{"user and network namespaces", []string{"--user", "--map-root-user", "--net"}, []string{"--user", "--net", "--preserve-credentials"}},
		{"network namespace", []string{"--net"}, []string{"--net"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.args) == 1 {
				testenv.RequireRoot(t)
			}
			target := exec.Command(unshare, append(tc.args, "--", "sh", "-c", "ip link set lo up 2>/dev/null || true; echo up; exec sleep 60")...)
			out, _ := target.StdoutPipe()
			if err := target.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { target.Process.Kill(); target.Wait() }()
			if line, _ := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "up" {
				t.Skipf("unshare %v did not start a namespace here", tc.args)
			}
			port := 30000 + time.Now().Nanosecond()%20000
			f, err := ListenLoopback(target.Process.Pid, port)
			if err != nil {
				t.Fatalf("ListenLoopback: %v", err)
			}
			ln, err := net.FileListener(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 200*time.Millisecond); err == nil {
				c.Close()
				t.Fatal("the socket listens on this namespace's loopback, not the target's")
			}
			accepted := make(chan string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					accepted <- err.Error()
					return
				}
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				accepted <- strings.TrimSpace(line)
			}()
			probe := fmt.Sprintf(`exec 3<>/dev/tcp/127.0.0.1/%d && echo hello-from-inside >&3`, port)
			args := append([]string{"--target", strconv.Itoa(target.Process.Pid)}, tc.join...)
			if b, err := exec.Command(nsenter, append(args, "--", "bash", "-c", probe)...).CombinedOutput(); err != nil {
				t.Fatalf("connecting from inside: %v\n%s", err, b)
			}
			select {
			case got := <-accepted:
				if got != "hello-from-inside" {
					t.Fatalf("accepted %q", got)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no connection from inside reached the socket")
			}
			// The loopback inside takes large packets (loopbackGSO), where
			// the kernel lets a device's limit change (5.19 and later).
			if ip, err := exec.LookPath("ip"); err == nil && kernelAtLeast(5, 19) {
				b, err := exec.Command(nsenter, append(args, "--", ip, "-d", "link", "show", "lo")...).CombinedOutput()
				if err != nil {
					t.Fatalf("ip link inside: %v\n%s", err, b)
				}
				if want := fmt.Sprintf("gso_max_size %d ", loopbackGSO); !strings.Contains(string(b), want) {
					t.Errorf("the sandbox's lo: want %q in\n%s", want, b)
				}
			}
		})
	}
}

// kernelAtLeast says whether the running kernel's release is major.minor
// or later.
func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var ma, mi int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || (ma == major && mi >= minor)
}
