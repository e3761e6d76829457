package nixdaemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// DefaultSocketPath is where a multi-user Nix install listens.
const DefaultSocketPath = "/nix/var/nix/daemon-socket/socket"

// SocketPath returns $NIX_DAEMON_SOCKET_PATH if set (as Nix itself honours
// it), else DefaultSocketPath.
func SocketPath() string {
	if p := os.Getenv("NIX_DAEMON_SOCKET_PATH"); p != "" {
		return p
	}
	return DefaultSocketPath
}

// Option configures a Client.
type Option func(*Client)

// WithEvents sets the function that receives stderr events, including
// those of the handshake. See SetEventFunc.
func WithEvents(f EventFunc) Option { return func(c *Client) { c.onEvent = f } }

// Client is one connection to the Nix daemon. Its methods may be called
// from several goroutines but run one at a time, as the protocol is
// strictly request/reply; open several Clients for parallel work.
//
// Every method takes a context: its deadline becomes the socket deadline,
// and cancelling it closes the connection (the daemon notices and stops
// the operation). After a cancel, an I/O error or a ProtocolError the
// Client is closed and every later call returns an error wrapping
// ErrClosed. A DaemonError leaves it usable.
type Client struct {
	mu      sync.Mutex
	conn    net.Conn
	rd      *reader
	onEvent EventFunc
	broken  error // non-nil once the conversation is over

	version       ProtocolVersion // negotiated
	daemonVersion ProtocolVersion // what the daemon offered
	nixVersion    string
	trust         TrustStatus
	features      []string
}

// Dial connects to the daemon socket at path (SocketPath() when empty) and
// performs the handshake.
func Dial(ctx context.Context, path string, opts ...Option) (*Client, error) {
	if path == "" {
		path = SocketPath()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("nixdaemon: connecting to the Nix daemon: %w", err)
	}
	c, err := NewClient(ctx, conn, opts...)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// NewClient performs the handshake on an already open connection (Dial
// uses it; tests pass one end of a net.Pipe). It takes ownership of conn
// and closes it on failure.
func NewClient(ctx context.Context, conn net.Conn, opts ...Option) (*Client, error) {
	c := &Client{conn: conn, rd: newReader(conn)}
	for _, o := range opts {
		o(c)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.run(ctx, "handshake", c.handshake)
	if err != nil {
		c.closeLocked(err)
		return nil, err
	}
	return c, nil
}

// ProtocolVersion is the negotiated version: the lower of ClientVersion and
// what the daemon offered.
func (c *Client) ProtocolVersion() ProtocolVersion { return c.version }

// DaemonProtocolVersion is the version the daemon offered.
func (c *Client) DaemonProtocolVersion() ProtocolVersion { return c.daemonVersion }

// DaemonNixVersion is the daemon's Nix version string, e.g. "2.18.1"
// (sent from 1.33; "" before).
func (c *Client) DaemonNixVersion() string { return c.nixVersion }

// Trust says whether the daemon trusts this client (sent from 1.35).
func (c *Client) Trust() TrustStatus { return c.trust }

// SetEventFunc replaces the function receiving stderr events (nil drops
// them). It waits for a call in progress to finish.
func (c *Client) SetEventFunc(f EventFunc) {
	c.mu.Lock()
	c.onEvent = f
	c.mu.Unlock()
}

// Close closes the connection. A call in progress fails; Close returns
// once it has.
func (c *Client) Close() error {
	err := c.conn.Close()
	c.mu.Lock()
	if c.broken == nil {
		c.broken = ErrClosed
	}
	c.mu.Unlock()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (c *Client) closeLocked(cause error) {
	if c.broken == nil {
		c.broken = fmt.Errorf("%w (after: %v)", ErrClosed, cause)
	}
	_ = c.conn.Close() // the cause is what matters; a close error adds nothing
}

// do runs one operation: it holds the lock, refuses a closed client and
// closes the connection on anything but a DaemonError.
func (c *Client) do(ctx context.Context, op string, f func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return fmt.Errorf("nixdaemon: %s: %w", op, c.broken)
	}
	err := c.run(ctx, op, f)
	if err != nil && !keepsConnection(err) {
		c.closeLocked(err)
	}
	return err
}

// keepsConnection reports whether err ended an operation cleanly, with the
// conversation still in step: the daemon's own error, or a complete reply
// that says "no".
func keepsConnection(err error) bool {
	var de *DaemonError
	return errors.As(err, &de) || errors.Is(err, ErrInvalidPath)
}

// run applies ctx to the connection around f: the deadline becomes the
// socket deadline, and cancellation closes the socket so that a blocked
// read or write returns.
func (c *Client) run(ctx context.Context, op string, f func() error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("nixdaemon: %s: %w", op, err)
	}
	deadline, _ := ctx.Deadline() // zero when none: clears an old deadline
	if err := c.conn.SetDeadline(deadline); err != nil {
		return fmt.Errorf("nixdaemon: %s: setting deadline: %w", op, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.conn.Close() })
	c.rd.reset(op)
	err := f()
	if !stop() {
		// ctx ended while f ran: the connection was closed under it, and
		// whatever f returned is a consequence of that.
		return fmt.Errorf("nixdaemon: %s: %w", op, context.Cause(ctx))
	}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && !deadline.IsZero() && !time.Now().Before(deadline) {
		return fmt.Errorf("nixdaemon: %s: %w (%w)", op, context.DeadlineExceeded, err)
	}
	return err
}

// send writes one request in a single write.
func (c *Client) send(q *request) error {
	if _, err := c.conn.Write(q.Bytes()); err != nil {
		return fmt.Errorf("nixdaemon: %s: writing request: %w", c.rd.op, err)
	}
	return nil
}

// stderr processes the log messages that precede every reply.
func (c *Client) stderr() error { return readStderr(c.rd, c.version, c.onEvent) }

// handshake follows BasicClientConnection::handshake and ::postHandshake
// (worker-protocol-connection.cc), then RemoteStore::initConnection's
// processStderr.
func (c *Client) handshake() error {
	r := c.rd
	if err := c.send(new(request).u64(workerMagic1).u64(uint64(ClientVersion))); err != nil {
		return err
	}
	magic, err := r.uint64("daemon magic")
	if err != nil {
		return err
	}
	if magic != workerMagic2 {
		return protoErr(r.op, "bad magic %#x from daemon (want %#x): not a Nix daemon socket?", magic, workerMagic2)
	}
	dv, err := r.uint64("daemon protocol version")
	if err != nil {
		return err
	}
	if dv > 0xffff {
		return protoErr(r.op, "daemon protocol version %#x out of range", dv)
	}
	c.daemonVersion = ProtocolVersion(dv)
	if c.daemonVersion.Major() != 1 || c.daemonVersion < MinDaemonVersion {
		return &VersionError{Daemon: c.daemonVersion, Min: MinDaemonVersion}
	}
	c.version = min(c.daemonVersion, ClientVersion)

	if c.version.Minor() >= verFeatureExchange {
		// We ask for no optional feature, so none changes a format.
		if err := c.send(new(request).strs(nil)); err != nil {
			return err
		}
		if c.features, err = r.strings("daemon features", maxDaemonFeatures, maxDaemonFeatureName); err != nil {
			return err
		}
	}

	post := new(request)
	if c.version.Minor() >= verCPUAffinity {
		post.u64(0) // obsolete CPU affinity: none
	}
	if c.version.Minor() >= verReserveSpace {
		post.bool(false) // obsolete reserveSpace
	}
	if err := c.send(post); err != nil {
		return err
	}

	if c.version.Minor() >= verDaemonNixVersion {
		if c.nixVersion, err = r.string("daemon Nix version", maxDaemonNixVersion); err != nil {
			return err
		}
	}
	if c.version.Minor() >= verTrust {
		t, err := r.uint64("trust status")
		if err != nil {
			return err
		}
		if t > uint64(TrustNotTrusted) {
			return protoErr(r.op, "invalid trust status %d", t)
		}
		c.trust = TrustStatus(t)
	}
	return c.stderr()
}
