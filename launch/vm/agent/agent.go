package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"
)

// Ready is what the agent tells the supervisor once the guest is set up
// (the first line of the "ready" stream, JSON).
type Ready struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

type agent struct {
	cfg      *Config
	setupErr error
	mux      *yamux.Session

	mu       sync.Mutex
	sessions int  // running sessions
	stopping bool // the guest is powering down
	idle     chan struct{}
}

// MuxConfig is the yamux configuration of both ends. Keep-alives are
// off: a guest under emulation can be slow to answer, and the port's end
// (QEMU exiting) is what says the other side is gone. Writes may wait
// long for the same reason.
func MuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 2 * time.Minute
	c.StreamOpenTimeout = 2 * time.Minute
	c.AcceptBacklog = 1024
	c.LogOutput = io.Discard
	return c
}

// Main is the agent's main: this binary started as Path. It returns only
// when the port closes.
func Main([]string) int {
	kmsg("started")
	a := &agent{idle: make(chan struct{}, 1)}
	// The guest's power-down signals everything: the agent stays until its
	// sessions' commands (signalled too) have ended and their status is
	// reported, then goes, which powers the guest off.
	signal.Ignore(syscall.SIGPIPE)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT)
	go func() {
		for sig := range sigs {
			if sig == syscall.SIGTERM {
				a.drain()
			}
		}
	}()

	cfg, err := readConfig(filepath.Join(MetaDir, ConfigFile))
	if err != nil {
		fail("reading the run's configuration: %v", err)
		cfg = &Config{User: "root", Home: "/root", Project: "/"}
		a.setupErr = err
	}
	a.cfg = cfg
	if a.setupErr == nil {
		if err := setup(cfg); err != nil {
			fail("%v", err)
			a.setupErr = err
		}
	}
	port, err := openPort(PortName, 60*time.Second)
	if err != nil {
		fail("%v", err)
		return 1
	}
	mux, err := yamux.Server(port, MuxConfig())
	if err != nil {
		fail("%v", err)
		return 1
	}
	a.mux = mux
	a.sayReady()
	kmsg("ready")
	if a.setupErr == nil {
		if cfg.Proxy != "" {
			if err := a.offerTCP(cfg.Proxy, StreamProxy); err != nil {
				fail("offering the proxy: %v", err)
			}
		}
		if cfg.SSHAgent != "" {
			if err := a.offerUnix(cfg.SSHAgent, StreamSSHAgent); err != nil {
				fail("offering the SSH agent: %v", err)
			}
		}
	}
	for {
		st, err := mux.Accept()
		if err != nil {
			return 0
		}
		if !a.begin() {
			st.Close()
			continue
		}
		go func() {
			defer a.end()
			a.serveSession(st)
		}()
	}
}

func (a *agent) begin() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopping {
		return false
	}
	a.sessions++
	return true
}

func (a *agent) end() {
	a.mu.Lock()
	a.sessions--
	idle := a.sessions == 0
	a.mu.Unlock()
	if idle {
		select {
		case a.idle <- struct{}{}:
		default:
		}
	}
}

// drain waits for the running sessions to end, then ends the agent.
func (a *agent) drain() {
	a.mu.Lock()
	a.stopping = true
	a.mu.Unlock()
	go func() {
		for {
			a.mu.Lock()
			n := a.sessions
			a.mu.Unlock()
			if n == 0 {
				syncDisks()
				os.Exit(0)
			}
			<-a.idle
		}
	}()
}

// syncDisks writes what the guest's store has in memory to its disk
// before the power goes.
func syncDisks() { unix.Sync() }

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "claude-sandbox-agent: "+format+"\n", args...)
}

func (a *agent) sayReady() {
	st, err := a.open(StreamReady)
	if err != nil {
		return
	}
	defer st.Close()
	r := Ready{OK: a.setupErr == nil}
	if a.setupErr != nil {
		r.Error = a.setupErr.Error()
	}
	_ = json.NewEncoder(st).Encode(r)
}

// open opens a stream towards the supervisor, of the given kind.
func (a *agent) open(kind string) (net.Conn, error) {
	st, err := a.mux.Open()
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(st, kind+"\n"); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// offerTCP listens on addr inside the guest; each connection becomes a
// stream of kind to the supervisor's service.
func (a *agent) offerTCP(addr, kind string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go a.forward(ln, kind)
	return nil
}

// offerUnix listens on a Unix socket (the user's own) inside the guest.
func (a *agent) offerUnix(path, kind string) error {
	// The directories above the socket's own (/run/user) are walked by
	// the user; the socket's directory is the user's alone.
	dir := filepath.Dir(path)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	_ = os.Lchown(dir, a.cfg.UID, a.cfg.GID)
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chown(path, a.cfg.UID, a.cfg.GID); err != nil {
		ln.Close()
		return err
	}
	_ = os.Chmod(path, 0o600)
	go a.forward(ln, kind)
	return nil
}

func (a *agent) forward(ln net.Listener, kind string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			st, err := a.open(kind)
			if err != nil {
				c.Close()
				return
			}
			Splice(c, st)
		}()
	}
}

// Splice copies both ways until both directions ended, passing each
// direction's end on as a half-close.
func Splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		closeWrite(dst)
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
	a.Close()
	b.Close()
}

func closeWrite(c net.Conn) {
	switch c := c.(type) {
	case interface{ CloseWrite() error }:
		_ = c.CloseWrite()
	case *yamux.Stream:
		_ = c.Close() // a half-close: the other way still flows
	}
}

// openPort opens the virtio-serial port named name, waiting for the
// driver to bring it up. It is found through sysfs (/sys/class/virtio-
// ports/*/name), which needs no udev rule.
func openPort(name string, wait time.Duration) (*os.File, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		if dev, err := findPort(name); err == nil {
			return os.OpenFile(dev, os.O_RDWR, 0)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no virtio-serial port %s in the guest", name)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func findPort(name string) (string, error) {
	ports, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, p := range ports {
		data, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(data)) == name {
			dev := "/dev/" + filepath.Base(filepath.Dir(p))
			if _, err := os.Stat(dev); err == nil {
				return dev, nil
			}
		}
	}
	return "", errors.New("not found")
}

// ReadKind reads the first line of a stream the agent opened: its kind.
func ReadKind(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if len(line) > 64 {
		return "", errors.New("agent: a stream kind too long")
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// kmsg notes a step in the kernel log: the boot log, with the kernel's
// timestamps.
func kmsg(what string) {
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteString("claude-sandbox-agent: " + what + "\n")
		f.Close()
	}
}
