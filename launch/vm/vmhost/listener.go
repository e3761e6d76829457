package vmhost

import (
	"net"
	"sync"
)

// StreamListener is a net.Listener whose connections are streams the guest
// agent opened: what the supervisor's services (the egress proxy, the SSH
// agent) serve, as they serve a socket.
type StreamListener struct {
	name   string
	conns  chan net.Conn
	once   sync.Once
	closed chan struct{}
}

func NewStreamListener(name string) *StreamListener {
	return &StreamListener{name: name, conns: make(chan net.Conn, 64), closed: make(chan struct{})}
}

// Push queues a connection; false when the listener is closed.
func (l *StreamListener) Push(c net.Conn) bool {
	select {
	case <-l.closed:
		return false
	default:
	}
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *StreamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *StreamListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *StreamListener) Addr() net.Addr { return streamAddr(l.name) }

type streamAddr string

func (a streamAddr) Network() string { return "vm-agent" }
func (a streamAddr) String() string  { return string(a) }
