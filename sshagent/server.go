package sshagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// ServiceName is the session log's name for this service.
const ServiceName = "ssh-agent"

// Defaults for Server's limits.
const (
	DefaultIdleTimeout = 10 * time.Minute
	DefaultMaxConns    = 32
	// bodyWait bounds how long the rest of a message may take once its
	// length has arrived; replyWait how long a reply may take to write.
	bodyWait  = 10 * time.Second
	replyWait = 10 * time.Second
	dialWait  = 5 * time.Second
	// upstreamWait bounds the host agent's answer. Signing waits longer: a
	// key added with `ssh-add -c` asks the user to confirm, a hardware key
	// to be touched.
	upstreamWait = 10 * time.Second
	signWait     = 2 * time.Minute
)

// Server serves the filtered agent on a listener.
type Server struct {
	// Listener is the socket bound into the sandbox, made before the
	// sandbox started. Serve closes it.
	Listener net.Listener
	// Upstream is the host agent's socket (the host's SSH_AUTH_SOCK). Each
	// sandbox connection gets its own connection to it, so the host
	// agent's per-connection state (session bindings) stays per client.
	Upstream string
	// Filter decides which keys the sandbox sees; nil means AllKeys.
	Filter *Filter
	Log    sessionlog.Logger
	// IdleTimeout closes a connection that sends nothing for this long;
	// MaxConns bounds the connections served at once (a further one is
	// closed at once). Zero: the defaults.
	IdleTimeout time.Duration
	MaxConns    int

	mu      sync.Mutex
	allowed int
	refused int
}

// Name is the service's name in the session log and in status counts.
func (s *Server) Name() string { return ServiceName }

// Counts returns how many signatures were allowed and how many requests
// were refused.
func (s *Server) Counts() (allowed, refused int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.allowed, s.refused
}

func (s *Server) count(d sessionlog.Decision) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch d {
	case sessionlog.Allow:
		s.allowed++
	case sessionlog.Refuse:
		s.refused++
	}
}

func (s *Server) log(e sessionlog.Entry) {
	e.Service = ServiceName
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	s.count(e.Decision)
	s.Log.Log(e)
}

// Serve accepts connections until ctx ends or the listener fails. When it
// returns, the listener and every connection it served (to the sandbox
// and to the host agent) are closed and their goroutines have ended.
func (s *Server) Serve(ctx context.Context) error {
	if s.Log == nil {
		s.Log = sessionlog.Discard
	}
	if s.Filter == nil {
		s.Filter = AllKeys()
	}
	idle, maxConns := s.IdleTimeout, s.MaxConns
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		mu     sync.Mutex
		open   = map[net.Conn]struct{}{}
		closed bool
		wg     sync.WaitGroup
	)
	// closeAll ends the listener and every connection, which unblocks each
	// handler's read or write.
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		s.Listener.Close()
		mu.Lock()
		closed = true
		for c := range open {
			c.Close()
		}
		mu.Unlock()
	}()

	var err error
	for {
		c, aerr := s.Listener.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = aerr
			}
			break
		}
		mu.Lock()
		if closed || len(open) >= maxConns {
			full := !closed
			mu.Unlock()
			if full {
				s.log(sessionlog.Entry{Decision: sessionlog.Refuse, Op: "connect",
					Reason: fmt.Sprintf("more than %d connections to the agent at once", maxConns),
					Rule:   "built-in connection limit", Fix: "none: close idle connections inside the sandbox"})
			}
			c.Close()
			continue
		}
		open[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, c, idle)
			mu.Lock()
			delete(open, c)
			mu.Unlock()
			c.Close()
		}()
	}
	cancel()
	<-stopped
	wg.Wait()
	return err
}

// conn is one sandbox connection and its own connection to the host agent.
type conn struct {
	ctx  context.Context
	srv  *Server
	down net.Conn
	up   net.Conn
	// boundHost is the host key of the SSH session this connection was
	// bound to (session-bind), for the log of later signatures.
	boundHost string
	// listNoted: a hidden-keys note was logged for this connection.
	listNoted bool
	// upstreamNoted: an unreachable host agent was logged.
	upstreamNoted bool
}

func (s *Server) serveConn(ctx context.Context, c net.Conn, idle time.Duration) {
	cn := &conn{ctx: ctx, srv: s, down: c}
	defer cn.closeUpstream()
	for {
		_ = c.SetReadDeadline(time.Now().Add(idle))
		msg, err := readFrame(c, maxRequest, bodyWait)
		if err != nil {
			if errors.Is(err, errTooLarge) {
				s.log(sessionlog.Entry{Decision: sessionlog.Refuse, Op: "request",
					Reason: "request refused and connection closed: " + err.Error(),
					Rule:   "built-in message size limit", Fix: "none: no agent request needs that much"})
			}
			return
		}
		reply := cn.handle(msg)
		_ = c.SetWriteDeadline(time.Now().Add(replyWait))
		if writeFrame(c, reply) != nil {
			return
		}
	}
}

func (cn *conn) closeUpstream() {
	if cn.up != nil {
		cn.up.Close()
		cn.up = nil
	}
}

// roundTrip sends one message to the host agent and returns its reply.
// A failed exchange drops the connection; the next request dials again.
func (cn *conn) roundTrip(msg []byte, wait time.Duration) ([]byte, error) {
	if cn.up == nil {
		d := net.Dialer{Timeout: dialWait}
		up, err := d.DialContext(cn.ctx, "unix", cn.srv.Upstream)
		if err != nil {
			return nil, fmt.Errorf("the host agent at %s cannot be reached: %w", cn.srv.Upstream, err)
		}
		cn.up = up
	}
	_ = cn.up.SetDeadline(time.Now().Add(wait))
	// The supervisor ending interrupts a wait for the host agent (a
	// signature waiting for the user's confirmation) at once.
	up := cn.up
	defer context.AfterFunc(cn.ctx, func() { _ = up.SetDeadline(time.Unix(1, 0)) })()
	if err := writeFrame(cn.up, msg); err != nil {
		cn.closeUpstream()
		return nil, fmt.Errorf("the host agent: %w", err)
	}
	reply, err := readFrame(cn.up, maxReply, 0)
	if err != nil {
		cn.closeUpstream()
		return nil, fmt.Errorf("the host agent: %w", err)
	}
	return reply, nil
}

// upstreamFailed logs (once per connection) that the host agent is not
// there, and answers failure.
func (cn *conn) upstreamFailed(op string, err error) []byte {
	if !cn.upstreamNoted && cn.ctx.Err() == nil {
		cn.upstreamNoted = true
		cn.srv.log(sessionlog.Entry{Decision: sessionlog.Note, Op: op, Reason: err.Error(),
			Fix: "start an SSH agent on the host (ssh-agent, or your desktop's) before the sandbox"})
	}
	return []byte{msgFailure}
}

// hostKeys lists the host agent's keys.
func (cn *conn) hostKeys() ([]identity, error) {
	reply, err := cn.roundTrip([]byte{msgRequestIdentities}, upstreamWait)
	if err != nil {
		return nil, err
	}
	return parseIdentities(reply)
}

func (cn *conn) handle(msg []byte) []byte {
	switch msg[0] {
	case msgRequestIdentities:
		return cn.list()
	case msgSignRequest:
		return cn.sign(msg)
	case msgExtension:
		return cn.extension(msg)
	}
	return cn.refuseManagement(msg)
}

func (cn *conn) list() []byte {
	ids, err := cn.hostKeys()
	if err != nil {
		// No host agent: an empty agent, as ssh expects, and a note.
		cn.upstreamFailed("list", err)
		return encodeIdentities(nil)
	}
	var shown []identity
	var hidden []string
	for _, id := range ids {
		fp := Fingerprint(id.blob)
		if _, ok := cn.srv.Filter.Allows(fp, id.comment); ok {
			shown = append(shown, id)
		} else {
			hidden = append(hidden, describeKey(fp, id.comment))
		}
	}
	if len(hidden) > 0 && !cn.listNoted {
		cn.listNoted = true
		cn.srv.log(sessionlog.Entry{Decision: sessionlog.Note, Op: "list",
			Target: fmt.Sprintf("%d of %d keys shown", len(shown), len(ids)),
			Rule:   cn.srv.Filter.String(),
			Reason: "hidden from the sandbox: " + strings.Join(hidden, ", "),
			Fix:    "name a key's fingerprint or comment in " + ConfigKey + " to let the sandbox use it"})
	}
	return encodeIdentities(shown)
}

func describeKey(fp, comment string) string {
	if comment == "" {
		return fp
	}
	return fp + " (" + printable(comment, 80) + ")"
}

func (cn *conn) sign(msg []byte) []byte {
	w := &wire{b: msg[1:]}
	blob := w.string()
	data := w.string()
	w.uint32() // flags: passed on as sent
	if w.err {
		cn.srv.log(sessionlog.Entry{Decision: sessionlog.Refuse, Op: "sign", Reason: "malformed signature request",
			Rule: "agent protocol", Fix: "none: the client sent a request the agent protocol does not allow"})
		return []byte{msgFailure}
	}
	fp := Fingerprint(blob)
	what := cn.describeSigned(data)
	ids, err := cn.hostKeys()
	if err != nil {
		return cn.upstreamFailed("sign", err)
	}
	var found *identity
	for i := range ids {
		if string(ids[i].blob) == string(blob) {
			found = &ids[i]
			break
		}
	}
	if found == nil {
		cn.srv.log(sessionlog.Entry{Decision: sessionlog.Refuse, Op: "sign", Target: fp + " " + keyType(blob),
			Reason: what + " with a key the host agent does not hold",
			Rule:   "only the host agent's keys sign", Fix: "add the key to the host agent on the host (ssh-add KEY), then allow it with " + ConfigKey})
		return []byte{msgFailure}
	}
	target := describeKey(fp, found.comment)
	rule, ok := cn.srv.Filter.Allows(fp, found.comment)
	if !ok {
		cn.srv.log(sessionlog.Entry{Decision: sessionlog.Refuse, Op: "sign", Target: target, Rule: rule,
			Reason: what + " with a key the configuration does not allow",
			Fix:    cn.srv.Filter.fixFor(fp)})
		return []byte{msgFailure}
	}
	reply, err := cn.roundTrip(msg, signWait)
	if err != nil {
		return cn.upstreamFailed("sign", err)
	}
	e := sessionlog.Entry{Decision: sessionlog.Allow, Op: "sign", Target: target, Rule: rule, Reason: what}
	if len(reply) == 0 || reply[0] != msgSignResponse {
		e.Reason += "; the host agent declined (a confirmation refused, or the agent is locked)"
	}
	cn.srv.log(e)
	return reply
}

// describeSigned says what a signature is for, from the data signed: an
// SSH login (RFC 4252 §7) or an SSHSIG signature (ssh-keygen -Y sign, git
// commit signing). Anything else is named by its size only.
func (cn *conn) describeSigned(data []byte) string {
	if sig, ok := strings.CutPrefix(string(data), "SSHSIG"); ok {
		w := &wire{b: []byte(sig)}
		ns := w.string()
		if !w.err {
			return fmt.Sprintf("signature in namespace %q (ssh-keygen -Y sign; git uses \"git\")", printable(string(ns), 64))
		}
	}
	w := &wire{b: data}
	w.string() // session id
	const userauthRequest = 50
	if w.byte1() == userauthRequest && !w.err {
		user := w.string()
		w.string() // service
		method := string(w.string())
		if !w.err && strings.HasPrefix(method, "publickey") {
			s := fmt.Sprintf("SSH login as %q", printable(string(user), 64))
			if method == "publickey-hostbound-v00@openssh.com" {
				// The signed request names the server's host key itself.
				w.byte1()
				w.string() // algorithm
				w.string() // key
				if hk := w.string(); !w.err {
					return s + " to host key " + Fingerprint(hk)
				}
			}
			if cn.boundHost != "" {
				return s + " to host key " + cn.boundHost
			}
			return s
		}
	}
	return fmt.Sprintf("signature of %d bytes", len(data))
}

func (cn *conn) extension(msg []byte) []byte {
	w := &wire{b: msg[1:]}
	name := string(w.string())
	if w.err {
		cn.srv.log(sessionlog.Entry{Decision: sessionlog.Refuse, Op: "extension", Reason: "malformed extension request",
			Rule: "agent protocol", Fix: "none: the client sent a request the agent protocol does not allow"})
		return []byte{msgFailure}
	}
	if name != sessionBind {
		cn.srv.log(sessionlog.Entry{Decision: sessionlog.Refuse, Op: "extension", Target: printable(name, 80),
			Rule:   "only " + sessionBind + " is forwarded",
			Reason: "agent extension " + printable(name, 80) + " is not forwarded to the host agent",
			Fix:    "none from inside the sandbox: use the extension on the host"})
		// PROTOCOL.agent: an unsupported extension is a plain failure.
		return []byte{msgFailure}
	}
	// session-bind only narrows what the host agent allows: it verifies
	// the host key's signature over the session id, records the hop, and
	// then signs with a key added with `ssh-add -h` only for the hosts the
	// key is bound to. So it goes through, on this client's own connection
	// to the host agent. Refusing it would weaken nothing for plain keys
	// (ssh treats a failed bind as non-fatal) but would break every
	// destination-constrained key: ssh-agent refuses to sign with one on
	// an unbound connection.
	hostKey := w.string()
	w.string() // session id
	w.string() // the host key's signature over it
	forwarding := w.byte1()
	reply, err := cn.roundTrip(msg, upstreamWait)
	if err != nil {
		return cn.upstreamFailed("session-bind", err)
	}
	e := sessionlog.Entry{Decision: sessionlog.Allow, Op: "session-bind", Rule: "built-in: " + sessionBind + " is forwarded (it only narrows)"}
	if !w.err {
		e.Target = "host key " + Fingerprint(hostKey) + " " + keyType(hostKey)
		if forwarding != 0 {
			e.Reason = "agent forwarded to that host"
		} else {
			e.Reason = "agent bound to an SSH session with that host"
		}
	}
	if len(reply) == 0 || reply[0] != msgSuccess {
		e.Reason = "the host agent rejected the binding"
	} else if !w.err && forwarding == 0 {
		cn.boundHost = Fingerprint(hostKey)
	}
	cn.srv.log(e)
	return reply
}

// management names a request that would change the host agent, and what
// the user can do instead.
func management(t byte) (op, what, fix string, ok bool) {
	const addFix = "add keys on the host (ssh-add KEY outside the sandbox), then allow them with " + ConfigKey
	const smartcardFix = "add them on the host (ssh-add -s outside the sandbox)"
	switch t {
	case msgAddIdentity, msgAddIDConstrained:
		return "add", "adding a key to the host agent", addFix, true
	case msgRemoveIdentity:
		return "remove", "removing a key from the host agent", "remove keys on the host (ssh-add -d KEY outside the sandbox), or hide them from the sandbox with " + ConfigKey, true
	case msgRemoveAllIdentities:
		return "remove-all", "removing every key from the host agent", "remove keys on the host (ssh-add -D outside the sandbox), or hide them from the sandbox with " + ConfigKey, true
	case msgV1RemoveAllIdentities:
		return "remove-all", "removing every key (protocol 1) from the host agent", "remove keys on the host (ssh-add -D outside the sandbox)", true
	case msgAddSmartcardKey, msgAddSmartcardKeyConstrain:
		return "add-smartcard", "adding smartcard keys to the host agent", smartcardFix, true
	case msgRemoveSmartcardKey:
		return "remove-smartcard", "removing smartcard keys from the host agent", "remove them on the host (ssh-add -e outside the sandbox)", true
	case msgLock:
		return "lock", "locking the host agent", "lock it on the host (ssh-add -x outside the sandbox)", true
	case msgUnlock:
		return "unlock", "unlocking the host agent", "unlock it on the host (ssh-add -X outside the sandbox)", true
	case msgV1RequestIdentities:
		return "list-v1", "listing protocol 1 keys", "none: protocol 1 is obsolete; use an SSH-2 client", true
	}
	return "", "", "", false
}

func (cn *conn) refuseManagement(msg []byte) []byte {
	op, what, fix, ok := management(msg[0])
	e := sessionlog.Entry{Decision: sessionlog.Refuse, Op: op, Rule: "built-in: the sandbox cannot change the host agent"}
	if ok {
		e.Reason = what + " is not allowed from inside the sandbox"
		e.Fix = fix
		if msg[0] == msgRemoveIdentity {
			w := &wire{b: msg[1:]}
			if blob := w.string(); !w.err {
				e.Target = Fingerprint(blob)
			}
		}
	} else {
		e.Op = fmt.Sprintf("request %d", msg[0])
		e.Rule = "built-in: only listing, signing and " + sessionBind + " are forwarded"
		e.Reason = fmt.Sprintf("agent request type %d is not forwarded to the host agent", msg[0])
		e.Fix = "none from inside the sandbox"
	}
	cn.srv.log(e)
	return []byte{msgFailure}
}
