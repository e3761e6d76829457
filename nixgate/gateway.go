package nixgate

import (
	"context"
	"net"
	"sync"

	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// Config is one sandbox's gateway.
type Config struct {
	// Socket is the host daemon's socket (default nixdaemon.SocketPath()).
	Socket string
	// Host is what ProbeHost found out about that daemon. A zero Sandbox
	// (unknown) counts as not sandboxed.
	Host HostFacts
	// AllowUnsandboxedBuilds is the --nix-unsandboxed-builds opt-in: allow
	// builds although the host daemon does not sandbox them.
	AllowUnsandboxedBuilds bool
	// Network says whether the sandbox's network is open. When it is not,
	// fixed-output and impure derivations (which the daemon builds with
	// the host's network) are refused.
	Network bool
	// FetchPolicy, when set and Network is open, decides each fixed-output
	// or impure derivation a build would run from the URLs it declares;
	// rule names the allowlist entry that decided. This is the egress
	// allowlist's seam.
	FetchPolicy func(drvPath string, urls []string) (ok bool, rule string)
	// Logger receives one entry per decision (default: dropped).
	Logger sessionlog.Logger
}

// Gateway serves the worker protocol to a sandbox. Each client connection
// gets its own connection to the host daemon.
type Gateway struct {
	cfg Config
}

// New returns a gateway for cfg.
func New(cfg Config) *Gateway {
	if cfg.Socket == "" {
		cfg.Socket = nixdaemon.SocketPath()
	}
	if cfg.Logger == nil {
		cfg.Logger = sessionlog.Discard
	}
	return &Gateway{cfg: cfg}
}

// Serve accepts connections from l until ctx ends (then it closes l and
// every connection, and returns nil once they are gone) or l fails.
func (g *Gateway) Serve(ctx context.Context, l net.Listener) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	var err error
	for {
		var conn net.Conn
		conn, err = l.Accept()
		if err != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = g.ServeConn(ctx, conn)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// ServeConn serves one client connection and closes it.
func (g *Gateway) ServeConn(ctx context.Context, conn net.Conn) error {
	var d net.Dialer
	s := &session{g: g}
	return nixdaemon.Relay(ctx, conn, nixdaemon.RelayConfig{
		Dial: func(ctx context.Context) (net.Conn, error) {
			return d.DialContext(ctx, "unix", g.cfg.Socket)
		},
		Decide: s.decide,
		Decided: func(_ *nixdaemon.Request, v nixdaemon.Verdict) {
			if e, ok := v.Note.(sessionlog.Entry); ok {
				g.cfg.Logger.Log(e)
			}
		},
		// A sandbox is never a trusted client, whatever the host's trust
		// in this user: say so, as the daemon says it to the untrusted.
		Trust: nixdaemon.TrustNotTrusted,
		OnProtocolError: func(err error) {
			g.cfg.Logger.Log(sessionlog.Entry{Service: "nix", Decision: sessionlog.Note,
				Reason: "connection closed: " + err.Error()})
		},
	})
}

// session is one client connection's state: what its SetOptions said, as
// far as the policy cares.
type session struct {
	g *Gateway
	// fallback is the client's --fallback (SetOptions' tryFallback): a
	// substitution that fails is then built instead.
	fallback bool
}

// decide is the relay's decision function: one policy decision per
// request, logged once acted on.
func (s *session) decide(ctx context.Context, q *nixdaemon.Request, up *nixdaemon.Client) nixdaemon.Verdict {
	g := s.g
	var d decision
	switch q.Op {
	case nixdaemon.OpBuildPaths, nixdaemon.OpBuildPathsWithResults:
		d = g.decideBuild(ctx, q, up, s.fallback)
	default:
		d = g.decideStatic(q)
		if q.Op == nixdaemon.OpSetOptions && !d.refuse {
			s.fallback = q.Settings.TryFallback
		}
	}
	// Logged by Decided, once the verdict has been acted on.
	v := nixdaemon.Verdict{Note: d.entry(q)}
	if d.refuse {
		v.Refusal = d.message()
	}
	return v
}
