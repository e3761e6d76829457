package vmhost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/sockpath"
)

// QMP access to a running VM. go-qemu's Monitor.Run and its greeting read
// take no context and block for as long as QEMU stays silent, so every call
// here runs beside a deadline that closes the connection when it passes:
// a wedged QEMU makes `stop` or `ps` slow by a few seconds, never hang.

// qmpTimeout bounds one QMP exchange (connect + greeting + one command).
var qmpTimeout = 5 * time.Second

// qmpConn is one connected monitor.
type qmpConn struct {
	mon *qmp.SocketMonitor
	raw *raw.Monitor
	dir *os.File // keeps the /proc/self/fd path of the socket's directory valid
}

// dialQMP connects to the QMP socket at path and negotiates capabilities.
func dialQMP(ctx context.Context, path string) (*qmpConn, error) {
	ctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	addr, dir, err := sockpath.Short(path)
	if err != nil {
		return nil, err
	}
	mon, err := qmp.NewSocketMonitor("unix", addr, qmpTimeout)
	if err != nil {
		dir.Close()
		return nil, fmt.Errorf("connecting to QMP at %s: %w", path, err)
	}
	if err := withDeadline(ctx, mon, mon.Connect); err != nil {
		dir.Close()
		return nil, fmt.Errorf("QMP handshake with %s: %w", path, err)
	}
	return &qmpConn{mon: mon, raw: raw.NewMonitor(mon), dir: dir}, nil
}

func (c *qmpConn) Close() {
	_ = c.mon.Disconnect()
	c.dir.Close()
}

// withDeadline runs fn and, if ctx ends first, closes the monitor's
// connection so that fn's blocked read returns.
func withDeadline(ctx context.Context, mon *qmp.SocketMonitor, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = mon.Disconnect()
		<-done
		return fmt.Errorf("QEMU did not answer on QMP within %s: %w", qmpTimeout, ctx.Err())
	}
}

// run is one command with its own deadline.
func (c *qmpConn) run(ctx context.Context, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	return withDeadline(ctx, c.mon, fn)
}

// Status is what `ps` shows of a VM: QEMU's run state ("running",
// "shutdown", "paused"…) and whether KVM accelerates it.
func (c *qmpConn) Status(ctx context.Context) (state string, kvm bool, err error) {
	var st raw.StatusInfo
	if err := c.run(ctx, func() (err error) { st, err = c.raw.QueryStatus(); return }); err != nil {
		return "", false, err
	}
	var k raw.KVMInfo
	if err := c.run(ctx, func() (err error) { k, err = c.raw.QueryKVM(); return }); err != nil {
		return st.Status.String(), false, err
	}
	return st.Status.String(), k.Enabled, nil
}

// Powerdown presses the virtual power button: the guest shuts down cleanly
// (its services get SIGTERM) and QEMU exits when it powers off.
func (c *qmpConn) Powerdown(ctx context.Context) error {
	return c.run(ctx, c.raw.SystemPowerdown)
}

// Quit ends QEMU at once, without asking the guest.
func (c *qmpConn) Quit(ctx context.Context) error {
	err := c.run(ctx, c.raw.Quit)
	// QEMU may close the socket before its reply arrives.
	if err != nil && isClosedConn(err) {
		return nil
	}
	return err
}

func isClosedConn(err error) bool {
	return errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE) || errors.Is(err, os.ErrClosed) ||
		err.Error() == "unexpected end of JSON input"
}
