package egress

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// clock is when bytes last moved on a connection, or on either side of
// a tunnel (both sides share one): a tunnel is idle only when neither
// direction moves. It counts from its own start on the monotonic clock,
// so a change of the wall clock does not end connections.
type clock struct {
	start time.Time
	last  atomic.Int64 // since start
}

func newClock() *clock { return &clock{start: time.Now()} }

func (c *clock) touch()              { c.last.Store(int64(time.Since(c.start))) }
func (c *clock) lastMove() time.Time { return c.start.Add(time.Duration(c.last.Load())) }

// conn is a connection that ends when idle: a read or a write that waits
// while nothing has moved on its clock for longer than idle fails with a
// timeout. A deadline its user sets (http.Server's header and keep-alive
// limits) is kept as well: the earlier of the two applies.
//
// The idle deadline is re-armed only when it fires, not on every read, so
// bulk transfers pay a clock update per read and nothing else.
type conn struct {
	net.Conn
	prefix []byte // bytes read ahead, returned first (the sniffed byte, a hijacked request's buffered bytes)
	clock  *clock
	idle   time.Duration

	mu             sync.Mutex
	userRD, userWD time.Time // deadlines set by the conn's user
	armedR, armedW bool      // a deadline is in force on the underlying conn

	closeOnce sync.Once
	onClose   func()
}

func newConn(c net.Conn, clk *clock, idle time.Duration, onClose func()) *conn {
	return &conn{Conn: c, clock: clk, idle: idle, onClose: onClose}
}

func (c *conn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	c.arm(true)
	for {
		n, err := c.Conn.Read(p)
		if n > 0 {
			c.clock.touch()
		}
		if err != nil && n == 0 && isTimeout(err) && c.rearm(true) {
			continue
		}
		return n, err
	}
}

func (c *conn) Write(p []byte) (int, error) {
	c.arm(false)
	written := 0
	for {
		n, err := c.Conn.Write(p[written:])
		written += n
		if n > 0 {
			c.clock.touch()
		}
		if err != nil && isTimeout(err) && c.rearm(false) {
			continue
		}
		return written, err
	}
}

// arm sets the underlying deadline when none is in force yet.
func (c *conn) arm(read bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if (read && !c.armedR) || (!read && !c.armedW) {
		c.apply(read)
	}
}

// apply sets the earlier of the user's deadline and the idle one.
// Called with c.mu held.
func (c *conn) apply(read bool) {
	dl := c.clock.lastMove().Add(c.idle)
	user := c.userWD
	if read {
		user = c.userRD
	}
	if !user.IsZero() && user.Before(dl) {
		dl = user
	}
	if read {
		_ = c.Conn.SetReadDeadline(dl)
		c.armedR = true
	} else {
		_ = c.Conn.SetWriteDeadline(dl)
		c.armedW = true
	}
}

// rearm decides a timeout: it was the user's deadline, or the connection
// has been idle long enough (false: return the error), or bytes moved
// since the deadline was set (true: wait again).
func (c *conn) rearm(read bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	user := c.userWD
	if read {
		user = c.userRD
	}
	if !user.IsZero() && !now.Before(user) {
		return false
	}
	if now.Sub(c.clock.lastMove()) >= c.idle {
		return false
	}
	c.apply(read)
	return true
}

func (c *conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.userRD, c.userWD = t, t
	c.apply(true)
	c.apply(false)
	return nil
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.userRD = t
	c.apply(true)
	return nil
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.userWD = t
	c.apply(false)
	return nil
}

// CloseWrite half-closes, so a client's end of request reaches the
// destination while the answer still flows back.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// tunnelSendBuffer is the send buffer asked for a tunnel's Unix socket.
const tunnelSendBuffer = 4 << 20

// splice copies a tunnel both ways until both directions end. Bytes from
// the client go to the destination by the kernel's splice(2) (io.Copy
// finds it through the connections' ReadFrom and WriteTo), so they do not
// pass through this process; the download into a client's TCP socket is
// copied in bursts instead (see copyBursts). A direction that reaches the
// end of its input half-closes its output; an error in either, the idle
// limit, or the server closing ends both.
//
// The idle limit cannot be kept by a wrapper here (it would hide the
// sockets from splice): each direction's read deadline instead expires
// every idle/4, and each expiry reports whether bytes moved. The tunnel
// ends when none moved either way for idle. Write deadlines stay unset: a
// copy interrupted while writing would lose what it holds.
func splice(client *conn, up net.Conn, idle time.Duration, buffers bufferPool) {
	clk := client.clock
	var once sync.Once
	closeAll := func() {
		once.Do(func() {
			client.Close()
			up.Close()
		})
	}
	defer closeAll()
	clientRaw := client.Conn
	upRaw := up
	if len(client.prefix) > 0 {
		// What the client sent before the tunnel opened (a TLS hello).
		if _, err := up.Write(client.prefix); err != nil {
			return
		}
		client.prefix = nil
	}
	if p, ok := up.(*prefixed); ok {
		// What the destination sent before the tunnel opened, through an
		// upstream proxy (an SSH banner).
		if len(p.prefix) > 0 {
			if _, err := clientRaw.Write(p.prefix); err != nil {
				return
			}
			p.prefix = nil
		}
		upRaw = p.Conn
	}
	_ = clientRaw.SetDeadline(time.Time{})
	_ = upRaw.SetDeadline(time.Time{})
	if uc, ok := clientRaw.(*net.UnixConn); ok {
		// A Unix socket's default send buffer (208 KiB) makes the
		// download direction stop and wake every 208 KiB; a larger one
		// keeps pace with TCP's (measured: about 0.75x direct throughput
		// becomes 0.85-0.95x). The kernel caps it at net.core.wmem_max.
		_ = uc.SetWriteBuffer(tunnelSendBuffer)
	}
	down := io.Copy
	if _, ok := clientRaw.(*net.TCPConn); ok {
		down = func(dst io.Writer, src io.Reader) (int64, error) {
			return copyBursts(dst, src, buffers)
		}
	}
	clk.touch()

	period := max(idle/4, time.Millisecond)
	otherDone := make(chan struct{})
	go func() {
		defer close(otherDone)
		pump(clientRaw, upRaw, down, clk, idle, period, closeAll, nil)
	}()
	pump(upRaw, clientRaw, io.Copy, clk, idle, period, closeAll, otherDone)
	<-otherDone
}

// pump copies src to dst with cp (see splice). After its own end of input
// it watches the other direction (done closes when that one ends), which
// may be stuck writing to a peer that does not read.
func pump(dst, src net.Conn, cp func(io.Writer, io.Reader) (int64, error), clk *clock, idle, period time.Duration, closeAll func(), done <-chan struct{}) {
	for {
		_ = src.SetReadDeadline(time.Now().Add(period))
		n, err := cp(dst, src)
		if n > 0 {
			clk.touch()
		}
		switch {
		case err == nil:
			closeWrite(dst)
			if done == nil {
				return
			}
			t := time.NewTicker(period)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					if time.Since(clk.lastMove()) >= idle {
						closeAll()
						return
					}
				}
			}
		case isTimeout(err) && time.Since(clk.lastMove()) < idle:
			continue
		default:
			closeAll()
			return
		}
	}
}

// copyBursts copies src to dst like io.Copy, in bursts: it waits for
// bytes holding no buffer, reads them into a small one, and moves to a
// buffer from buffers, given back when the burst ends, only when the
// small one fills (a bulk transfer; a quiet tunnel or one of small
// messages never holds one). It is for a download into a client's TCP
// socket on the sandbox's loopback, which takes large packets (nsenter's
// loopbackGSO): a write from a 1 MiB buffer makes them, splice(2) passes
// on the first hop's pieces and makes smaller ones. Measured with curl in
// a network namespace of its own, the proxy outside: 0.56-0.69x of a
// direct download by splice, 0.73-0.82x this way (with 64 KiB packets
// both are about 0.6x). src's read deadline applies as in io.Copy.
func copyBursts(dst io.Writer, src io.Reader, buffers bufferPool) (int64, error) {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return io.Copy(dst, src)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return io.Copy(dst, src)
	}
	small := make([]byte, smallBurst)
	var written int64
	for {
		// Wait, holding nothing, until src has bytes, its end, or an error.
		var peek [1]byte
		if err := rc.Read(func(fd uintptr) bool {
			_, _, err := unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			return err != unix.EAGAIN
		}); err != nil {
			return written, err
		}
		n, err := burst(dst, rc, small, buffers)
		written += n
		if err != errDrained {
			return written, err
		}
	}
}

// smallBurst is what a burst is read with until it proves to be bulk.
const smallBurst = 32 << 10

// errDrained: the socket has nothing more to read for now.
var errDrained = errors.New("drained")

// burst copies what src's socket holds to dst, reading without waiting:
// errDrained when it is empty, nil at its end.
func burst(dst io.Writer, rc syscall.RawConn, small []byte, buffers bufferPool) (int64, error) {
	buf := small
	defer func() {
		if len(buf) != len(small) {
			buffers.Put(buf)
		}
	}()
	var written int64
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			for {
				n, rerr = unix.Read(int(fd), buf)
				if rerr != unix.EINTR {
					return true
				}
			}
		}); err != nil {
			return written, err
		}
		if n > 0 {
			m, err := dst.Write(buf[:n])
			written += int64(m)
			if err != nil {
				return written, err
			}
			if n == len(small) && len(buf) == len(small) {
				buf = buffers.Get()
			}
			continue
		}
		switch rerr {
		case nil:
			return written, nil // the end
		case unix.EAGAIN:
			return written, errDrained
		default:
			return written, os.NewSyscallError("read", rerr)
		}
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}
