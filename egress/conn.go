package egress

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
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

// bufPool holds tunnel buffers: two per tunnel, reused.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// splice copies both ways until both directions end. A direction that
// reaches the end of its input half-closes its output; an error in
// either (a reset, the idle limit, the server closing) ends both.
func splice(a, b *conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(b, a)
	}()
	copyHalf(a, b)
	<-done
	a.Close()
	b.Close()
}

func copyHalf(dst, src *conn) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	_, err := io.CopyBuffer(dst, src, *bp)
	if err == nil {
		_ = dst.CloseWrite()
		return
	}
	dst.Close()
	src.Close()
}
