package nixdaemon

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// A relay serves one client connection as a daemon would and forwards it
// to one connection to the real daemon, at one protocol version: the
// lowest of the client's, ours (ClientVersion) and the daemon's. Every
// request is read completely and shown to a decision function before any
// of it reaches the daemon; what the daemon answers (log and activity
// messages, data requests, errors, the reply) is parsed, so the relay
// knows where each answer ends, and passed on byte for byte.

// RelayConfig configures Relay.
type RelayConfig struct {
	// Dial opens the connection to the daemon.
	Dial func(ctx context.Context) (net.Conn, error)
	// Decide sees every request, complete, before anything of it reaches
	// the daemon. up is the relay's own connection to the daemon, idle
	// between two operations: Decide may query it (QueryMissing,
	// NarFromPath, …) and must not keep it. Decide may clear
	// q.Info.Ultimate (AddToStoreNar), which is re-encoded when forwarded.
	// For an operation the relay cannot parse, Decide is called with only
	// Op and Version set, and the connection is closed after the refusal
	// whatever the verdict.
	Decide func(ctx context.Context, q *Request, up *Client) Verdict
	// Trust is what the client is told about its trust (from 1.35).
	Trust TrustStatus
	// Decided, if set, is called with each verdict: for a forwarded
	// request once it went to the daemon (so a log write overlaps the
	// daemon's work instead of delaying the request), for a refusal before
	// the client hears it. Either way before the client has its answer.
	Decided func(q *Request, v Verdict)
	// HandshakeTimeout bounds the handshake with both sides (default 30s).
	HandshakeTimeout time.Duration
	// OnProtocolError, if set, hears about a client or daemon that broke
	// the protocol (the connection is closed after it).
	OnProtocolError func(error)
}

// Verdict is a decision on one request.
type Verdict struct {
	// Refusal, when not empty, is sent to the client as the operation's
	// error (a normal Nix error, which the client prints) instead of
	// forwarding the request.
	Refusal string
	// Note is passed back to Decided untouched.
	Note any
}

// maxFrame bounds one frame of a framed body. Nix's clients send frames of
// their sink buffer's size (32 KiB); the daemon allocates each whole.
const maxFrame = 16 << 20

const defaultHandshakeTimeout = 30 * time.Second

type relay struct {
	cfg    RelayConfig
	client net.Conn
	up     net.Conn
	cr     *reader // from the client
	ur     *reader // from the daemon
	cw     *bufio.Writer
	uw     *bufio.Writer
	v      ProtocolVersion
	upC    *Client
}

// Relay serves client until it hangs up, ctx ends, or either side breaks
// the protocol. It closes client. A client hanging up while the daemon
// works on its request closes the daemon connection too, so the daemon
// stops (as it would for the client itself).
func Relay(ctx context.Context, client net.Conn, cfg RelayConfig) error {
	x := &relay{cfg: cfg, client: client, cr: newReader(client), cw: bufio.NewWriterSize(client, 64<<10)}
	var mu sync.Mutex
	closed := false
	closeAll := func() {
		mu.Lock()
		defer mu.Unlock()
		closed = true
		_ = client.Close()
		if x.up != nil {
			_ = x.up.Close()
		}
	}
	stop := context.AfterFunc(ctx, closeAll)
	defer func() {
		stop()
		closeAll()
	}()
	err := x.handshake(ctx, func(up net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		x.up = up
		return !closed
	})
	if err == nil {
		err = x.serve(ctx)
	}
	if ctx.Err() != nil {
		return nil
	}
	var pe *ProtocolError
	if errors.As(err, &pe) && cfg.OnProtocolError != nil {
		cfg.OnProtocolError(err)
	}
	return err
}

func (x *relay) handshake(ctx context.Context, setUp func(net.Conn) bool) error {
	timeout := x.cfg.HandshakeTimeout
	if timeout <= 0 {
		timeout = defaultHandshakeTimeout
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = x.client.SetDeadline(deadline)
	cr := x.cr
	cr.reset("handshake")

	magic, err := cr.uint64("client magic")
	if err != nil {
		return err
	}
	if magic != workerMagic1 {
		return protoErr("handshake", "bad magic %#x from client", magic)
	}

	// The daemon's version decides what we offer, so it is asked first
	// (Nix ≤ 2.3 clients wait for our version before sending theirs).
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	up, err := x.cfg.Dial(dctx)
	if err != nil {
		return fmt.Errorf("nixdaemon: relay: connecting to the daemon: %w", err)
	}
	if !setUp(up) {
		_ = up.Close()
		return context.Cause(ctx)
	}
	_ = up.SetDeadline(deadline)
	x.ur = newReader(up)
	x.uw = bufio.NewWriterSize(up, 64<<10)
	ur := x.ur
	ur.reset("handshake")
	if _, err := x.uw.Write(new(request).u64(workerMagic1).Bytes()); err != nil {
		return err
	}
	if err := x.uw.Flush(); err != nil {
		return err
	}
	if magic, err := ur.uint64("daemon magic"); err != nil {
		return err
	} else if magic != workerMagic2 {
		return protoErr("handshake", "bad magic %#x from daemon (want %#x): not a Nix daemon socket?", magic, workerMagic2)
	}
	dv, err := ur.uint64("daemon protocol version")
	if err != nil {
		return err
	}
	daemonVersion := ProtocolVersion(dv)
	if dv > 0xffff || daemonVersion.Major() != 1 || daemonVersion < MinDaemonVersion {
		return &VersionError{Daemon: daemonVersion, Min: MinDaemonVersion}
	}
	offer := min(daemonVersion, ClientVersion)
	if _, err := x.cw.Write(new(request).u64(workerMagic2).u64(uint64(offer)).Bytes()); err != nil {
		return err
	}
	if err := x.cw.Flush(); err != nil {
		return err
	}
	cv, err := cr.uint64("client protocol version")
	if err != nil {
		return err
	}
	clientVersion := ProtocolVersion(cv)
	if cv > 0xffff || clientVersion.Major() != 1 {
		return protoErr("handshake", "client protocol version %#x not supported", cv)
	}
	v := min(clientVersion, offer)
	x.v = v
	if v < MinClientVersion {
		// Too old to relay. Say so the way a daemon does (an error in the
		// startup messages), since the client can read that much.
		return x.refuseOldClient(v)
	}

	// Features (≥ 1.38): we offer none to either side, so both formats
	// stay the base ones of 1.38.
	if v.Minor() >= verFeatureExchange {
		if _, err := cr.strings("client features", maxDaemonFeatures, maxDaemonFeatureName); err != nil {
			return err
		}
		if _, err := x.cw.Write(new(request).strs(nil).Bytes()); err != nil {
			return err
		}
		if err := x.cw.Flush(); err != nil {
			return err
		}
	}
	hello := new(request).u64(uint64(v))
	if v.Minor() >= verFeatureExchange {
		hello.strs(nil)
	}
	if _, err := x.uw.Write(hello.Bytes()); err != nil {
		return err
	}
	if err := x.uw.Flush(); err != nil {
		return err
	}
	var features []string
	if v.Minor() >= verFeatureExchange {
		if features, err = ur.strings("daemon features", maxDaemonFeatures, maxDaemonFeatureName); err != nil {
			return err
		}
	}

	// postHandshake, client side: obsolete CPU affinity and reserveSpace.
	if v.Minor() >= verCPUAffinity {
		set, err := cr.uint64("CPU affinity flag")
		if err != nil {
			return err
		}
		if set != 0 {
			if _, err := cr.uint64("CPU affinity"); err != nil {
				return err
			}
		}
	}
	if v.Minor() >= verReserveSpace {
		if _, err := cr.uint64("reserveSpace"); err != nil {
			return err
		}
	}
	post := new(request)
	if v.Minor() >= verCPUAffinity {
		post.u64(0)
	}
	if v.Minor() >= verReserveSpace {
		post.bool(false)
	}
	if _, err := x.uw.Write(post.Bytes()); err != nil {
		return err
	}
	if err := x.uw.Flush(); err != nil {
		return err
	}

	// ClientHandshakeInfo from the daemon; the client gets the daemon's
	// Nix version and our word on its trust.
	c := &Client{conn: up, rd: ur, version: v, daemonVersion: daemonVersion, features: features}
	info := new(request)
	if v.Minor() >= verDaemonNixVersion {
		if c.nixVersion, err = ur.string("daemon Nix version", maxDaemonNixVersion); err != nil {
			return err
		}
		info.str(c.nixVersion)
	}
	if v.Minor() >= verTrust {
		t, err := ur.uint64("trust status")
		if err != nil {
			return err
		}
		if t > uint64(TrustNotTrusted) {
			return protoErr("handshake", "invalid trust status %d", t)
		}
		c.trust = TrustStatus(t)
		info.u64(uint64(x.cfg.Trust))
	}
	if _, err := x.cw.Write(info.Bytes()); err != nil {
		return err
	}
	x.upC = c

	// The daemon's startup messages, then STDERR_LAST (or an error, after
	// which it hangs up).
	failed, err := x.relayStderr(nil)
	if err != nil {
		return err
	}
	if err := x.cw.Flush(); err != nil {
		return err
	}
	if failed {
		return errors.New("nixdaemon: relay: the daemon refused the connection")
	}
	_ = x.client.SetDeadline(time.Time{})
	_ = up.SetDeadline(time.Time{})
	return nil
}

// refuseOldClient finishes the handshake at a version below what the relay
// serves, only to deliver an error the client can print.
func (x *relay) refuseOldClient(v ProtocolVersion) error {
	cr := x.cr
	if v.Minor() >= verCPUAffinity {
		if set, err := cr.uint64("CPU affinity flag"); err != nil {
			return err
		} else if set != 0 {
			if _, err := cr.uint64("CPU affinity"); err != nil {
				return err
			}
		}
	}
	if v.Minor() >= verReserveSpace {
		if _, err := cr.uint64("reserveSpace"); err != nil {
			return err
		}
	}
	msg := fmt.Sprintf("this Nix client speaks worker protocol %s; the sandbox's Nix daemon gateway needs %s or newer (Nix 2.3+)", v, MinClientVersion)
	_ = WriteStderrError(x.cw, v, msg)
	_ = x.cw.Flush()
	return fmt.Errorf("nixdaemon: relay: client protocol %s older than %s", v, MinClientVersion)
}

func (x *relay) serve(ctx context.Context) error {
	var raw bytes.Buffer
	for {
		cr := x.cr
		cr.reset("request")
		if raw.Cap() > 1<<20 {
			raw = bytes.Buffer{} // one large AddTextToStore must not pin its size
		}
		raw.Reset()
		cr.capture = &raw
		n, err := cr.uint64("operation")
		if err != nil {
			cr.capture = nil
			if errors.Is(err, io.ErrUnexpectedEOF) && raw.Len() == 0 {
				return nil // the client hung up between operations
			}
			return err
		}
		op := Op(n)
		cr.op = op.String()
		q, err := readRequest(cr, op, x.v)
		cr.capture = nil
		if err != nil {
			return x.unreadable(ctx, op, err)
		}
		q.raw = raw.Bytes()

		verdict := x.cfg.Decide(ctx, q, x.upC)
		if err := ctx.Err(); err != nil {
			return err
		}
		if x.upC.broken != nil {
			return fmt.Errorf("nixdaemon: relay: daemon connection failed during a decision: %w", x.upC.broken)
		}
		_ = x.up.SetDeadline(time.Time{})
		if verdict.Refusal != "" {
			x.decided(q, verdict)
			if err := x.refuse(q, verdict.Refusal); err != nil {
				return err
			}
			continue
		}
		if err := x.forward(q, verdict); err != nil {
			return err
		}
	}
}

// unreadable answers a request the relay could not read: an unknown
// operation (whose length is unknown) or a malformed one. Either way the
// stream is out of step, so the client gets an error and the connection
// ends, as the daemon itself does for an error before it starts work.
func (x *relay) unreadable(ctx context.Context, op Op, err error) error {
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		return err // I/O: nobody to tell
	}
	if !op.Known() {
		// Decided and answered: the end of this connection is the
		// protocol's, not a fault.
		q := &Request{Op: op, Version: x.v}
		verdict := x.cfg.Decide(ctx, q, x.upC)
		msg := verdict.Refusal
		if msg == "" {
			msg = fmt.Sprintf("worker operation %d is not supported by this gateway", uint64(op))
		}
		x.decided(q, verdict)
		_ = WriteStderrError(x.cw, x.v, msg)
		return x.cw.Flush()
	}
	msg := fmt.Sprintf("the sandbox's Nix daemon gateway could not read this %s request: %s", op, pe.Msg)
	_ = WriteStderrError(x.cw, x.v, msg)
	_ = x.cw.Flush()
	return err
}

// refuse answers q with an error instead of forwarding it, after consuming
// whatever body the client sends with it.
func (x *relay) refuse(q *Request, msg string) error {
	cr := x.cr
	switch q.body {
	case bodyFramed:
		// Said first: a client checks for an error between frames and
		// stops sending early (FramedSink::writeUnbuffered).
		if err := WriteStderrError(x.cw, x.v, msg); err != nil {
			return err
		}
		if err := x.cw.Flush(); err != nil {
			return err
		}
		return x.copyFrames()
	case bodyNAR:
		// A client before 1.25 reads nothing until its NAR is sent.
		if err := skipNAR(cr); err != nil {
			return err
		}
	}
	if err := WriteStderrError(x.cw, x.v, msg); err != nil {
		return err
	}
	return x.cw.Flush()
}

// forward sends q to the daemon and relays everything it answers.
func (x *relay) forward(q *Request, verdict Verdict) error {
	x.ur.reset(q.Op.String())
	head := q.raw
	if q.Op == OpAddToStoreNar {
		head = encodeAddToStoreNar(q)
	}
	if _, err := x.uw.Write(head); err != nil {
		return err
	}
	var bodyDone chan error
	if q.body != bodyNone {
		bodyDone = make(chan error, 1)
		go func() {
			x.cr.capture = x.uw
			var err error
			if q.body == bodyFramed {
				err = x.copyFrames()
			} else {
				err = skipNAR(x.cr)
			}
			x.cr.capture = nil
			if err == nil {
				err = x.uw.Flush()
			}
			if err != nil {
				// Unblock the other direction: the operation cannot end.
				_ = x.up.Close()
			}
			bodyDone <- err
		}()
	} else if err := x.uw.Flush(); err != nil {
		return err
	}
	x.decided(q, verdict)

	pulls := q.Op == OpImportPaths || (q.Op == OpAddToStoreNar && q.body == bodyNone)
	var stopWatch func()
	if bodyDone == nil && !pulls && mayRunLong(q) {
		stopWatch = x.watchHangup()
	}
	failed, err := x.relayStderr(q)
	if err == nil && !failed {
		x.ur.reset(q.Op.String())
		x.ur.capture = x.cw
		err = skipReply(x.ur, q)
		x.ur.capture = nil
	}
	if stopWatch != nil {
		stopWatch()
	}
	if bodyDone != nil {
		if berr := <-bodyDone; err == nil {
			err = berr
		}
	}
	if err != nil {
		return err
	}
	return x.cw.Flush()
}

func (x *relay) decided(q *Request, v Verdict) {
	if x.cfg.Decided != nil {
		x.cfg.Decided(q, v)
	}
}

// copyFrames consumes a framed body from the client up to its empty
// frame; with cr capturing, the frames go on to the daemon as they come.
func (x *relay) copyFrames() error {
	cr := x.cr
	for {
		n, err := cr.uint64("frame length")
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if n > maxFrame {
			return protoErr(cr.op, "frame of %d bytes exceeds maximum %d", n, maxFrame)
		}
		if _, err := io.CopyN(io.Discard, cr.in(), int64(n)); err != nil {
			return cr.fail("frame", err)
		}
		if x.cr.capture == x.uw && cr.br.Buffered() == 0 {
			if err := x.uw.Flush(); err != nil {
				return err
			}
		}
	}
}

// relayStderr passes the daemon's stderr messages for q (nil: the
// handshake's) to the client until STDERR_LAST (false) or STDERR_ERROR
// (true). STDERR_READ is answered with data read from the client.
func (x *relay) relayStderr(q *Request) (failed bool, err error) {
	r := x.ur
	r.capture = x.cw
	defer func() { r.capture = nil }()
	for {
		r.reset(r.op)
		msg, err := r.uint64("stderr message type")
		if err != nil {
			return false, err
		}
		switch msg {
		case stderrLast:
			return false, nil // flushed with the reply
		case stderrError:
			err := readDaemonError(r, x.v)
			var de *DaemonError
			if errors.As(err, &de) {
				return true, x.cw.Flush()
			}
			return false, err
		case stderrNext:
			if _, err := r.token("log message", maxLogLen); err != nil {
				return false, err
			}
		case stderrWrite:
			if _, err := r.skipString("write data", maxLogLen); err != nil {
				return false, err
			}
		case stderrRead:
			n, err := r.uint64("read length")
			if err != nil {
				return false, err
			}
			if q == nil || !(q.Op == OpImportPaths || (q.Op == OpAddToStoreNar && q.body == bodyNone)) {
				return false, protoErr(r.op, "daemon asked for data (STDERR_READ) during %s, which sends none", r.op)
			}
			if err := x.pull(n); err != nil {
				return false, err
			}
		case stderrStartActivity:
			for _, what := range []string{"activity id", "activity level", "activity type"} {
				if _, err := r.uint64(what); err != nil {
					return false, err
				}
			}
			if _, err := r.token("activity text", maxLogLen); err != nil {
				return false, err
			}
			if _, err := readFields(r); err != nil {
				return false, err
			}
			if _, err := r.uint64("activity parent"); err != nil {
				return false, err
			}
		case stderrStopActivity:
			if _, err := r.uint64("activity id"); err != nil {
				return false, err
			}
		case stderrResult:
			if _, err := r.uint64("activity id"); err != nil {
				return false, err
			}
			if _, err := r.uint64("result type"); err != nil {
				return false, err
			}
			if _, err := readFields(r); err != nil {
				return false, err
			}
		default:
			return false, protoErr(r.op, "unknown stderr message type %#x", msg)
		}
		// Log lines reach the client as they come, not when the reply does.
		if r.br.Buffered() == 0 {
			if err := x.cw.Flush(); err != nil {
				return false, err
			}
		}
	}
}

// pull answers the daemon's STDERR_READ of up to n bytes with the
// client's answer (one string of at most n bytes), as TunnelSource and
// processStderr exchange them.
func (x *relay) pull(n uint64) error {
	if err := x.cw.Flush(); err != nil {
		return err
	}
	cr := x.cr
	cr.reset(x.ur.op)
	cr.capture = x.uw
	_, err := cr.skipString("data", n)
	cr.capture = nil
	if err != nil {
		return err
	}
	return x.uw.Flush()
}

// mayRunLong reports whether the daemon may work on q for long (build,
// substitute, ask substituters over the network): only then is a client's
// hang-up watched for, which costs a goroutine and a wake-up per request.
func mayRunLong(q *Request) bool {
	switch q.Op {
	case OpBuildPaths, OpBuildPathsWithResults, OpBuildDerivation, OpEnsurePath, OpQueryMissing,
		OpHasSubstitutes, OpQuerySubstitutablePaths, OpQuerySubstitutablePathInfo,
		OpQuerySubstitutablePathInfos, OpOptimiseStore, OpVerifyStore, OpCollectGarbage,
		OpFindRoots, OpQueryAllValidPaths, OpNarFromPath, OpExportPath:
		return true
	case OpQueryValidPaths:
		return q.Substitute
	}
	return false
}

// watchHangup watches the client while the daemon works on a request
// that needs nothing more from it: if the client hangs up, the daemon
// connection is closed so the daemon stops the work. The returned
// function ends the watch.
func (x *relay) watchHangup() func() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := x.cr.br.Peek(1); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			_ = x.up.Close()
		}
	}()
	return func() {
		_ = x.client.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = x.client.SetReadDeadline(time.Time{})
		if errors.Is(x.cr.src.err, os.ErrDeadlineExceeded) {
			x.cr.src.err = nil
		}
	}
}
