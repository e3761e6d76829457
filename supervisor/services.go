package supervisor

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/claude-sandbox/claude-sandbox/broker"
	"github.com/claude-sandbox/claude-sandbox/egress"
	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/vmhost"
	"github.com/claude-sandbox/claude-sandbox/nixgate"
	"github.com/claude-sandbox/claude-sandbox/secrets"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
	"github.com/claude-sandbox/claude-sandbox/sshagent"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// Inherited hands out the descriptors a launcher passed, by number.
type Inherited func(fd int) (*os.File, error)

// FromSpec builds the supervisor a launcher's spec describes. log is the
// session log; the services log through a counter in front of it.
func FromSpec(ctx context.Context, spec control.Spec, fds Inherited, log sessionlog.Logger) (*Supervisor, error) {
	counter := &Counter{Next: log}
	s := &Supervisor{ID: spec.ID, Log: counter, Counter: counter}
	s.OnEnd = func() {
		// The control socket first: a launch that looks finds the sandbox
		// gone even where removing the record is not this process's right.
		if spec.RunDir != "" {
			_ = os.Remove(filepath.Join(spec.RunDir, control.SocketName))
		}
		if spec.Record != "" {
			_ = os.Remove(spec.Record)
		}
	}

	var vm *vmhost.VM
	ctl, err := listener(fds, spec.ControlFD, "control")
	if err != nil {
		return nil, err
	}
	s.Control = ctl
	if spec.FirstSessionFD != 0 {
		f, err := fds(spec.FirstSessionFD)
		if err != nil {
			return nil, fmt.Errorf("the first session: %w", err)
		}
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("the first session: %w", err)
		}
		s.First = control.NewConn(c)
	}

	// The broker's trust files (and the login's copy) are written before
	// the sandbox starts: a VM's guest reads them as it boots.
	var intercept egress.Interceptor
	if b := spec.Broker; b != nil && spec.Net != nil {
		br, err := newBroker(*b, spec.RunAs, counter)
		if err != nil {
			return nil, err
		}
		intercept = br.Intercept
	}
	switch {
	case spec.Adopted != nil:
		a := spec.Adopted
		life, err := fds(a.LifetimeFD)
		if err != nil {
			return nil, fmt.Errorf("the lifetime pipe: %w", err)
		}
		ad, err := Adopt(a.OuterPID, a.OuterStart, a.InitPID, a.InitStart, life)
		if err != nil {
			return nil, err
		}
		s.Sandbox = ad
	case spec.VM != nil:
		v, err := vmhost.Start(ctx, *spec.VM, counter)
		if err != nil {
			return nil, err
		}
		vm = v
		s.Sandbox = v
		// Stopping a VM is a power-down: the guest's store disk must be
		// left clean, and its services get their own grace.
		s.StopGrace = 30 * time.Second
	default:
		return nil, errors.New("the spec says nothing about the sandbox process")
	}

	var proxy *netService
	if n := spec.Net; n != nil {
		if proxy, err = newNetService(*n, fds, counter, intercept); err != nil {
			return nil, err
		}
		if vm != nil {
			// The guest's proxy connections arrive as agent streams.
			proxy.lns = append(proxy.lns, vm.ProxyListener())
		}
		s.Services = append(s.Services, proxy)
		s.Doors = map[string]func(*os.File) error{"net": proxy.addListener}
		if n.Mode == "learn" {
			s.Learned = func() []string { return proxy.policy.Learned().Proposed() }
		}
	}
	if n := spec.Nix; n != nil {
		ln, err := listener(fds, n.ListenerFD, "nix gateway")
		if err != nil {
			return nil, err
		}
		svc := &nixService{spec: *n, ln: ln, log: counter}
		if proxy != nil && spec.Net.Mode == "allowlist" {
			// A download a build would make is decided like the sandbox's own.
			svc.fetch = proxy.fetchPolicy
		}
		s.Services = append(s.Services, svc)
	}
	if a := spec.SSHAgent; a != nil {
		var ln net.Listener
		if vm != nil && a.ListenerFD == 0 {
			ln = vm.SSHAgentListener()
		} else if ln, err = listener(fds, a.ListenerFD, "ssh agent"); err != nil {
			return nil, err
		}
		filter := sshagent.AllKeys()
		if a.Keys != nil {
			if filter, err = sshagent.ParseKeys(a.Keys); err != nil {
				return nil, err
			}
		}
		s.Services = append(s.Services, &sshagent.Server{Listener: ln, Upstream: a.Upstream, Filter: filter, Log: counter})
	}
	return s, nil
}

// newBroker makes the sandbox's CA (its key stays in this process), writes
// the certificate files the sandbox trusts it by, and returns the broker
// the proxy hands the bound hosts' tunnels to. The files are written
// before the supervisor answers anyone: the first session starts after.
func newBroker(spec control.BrokerSpec, runAs *control.RunAs, log sessionlog.Logger) (*broker.Broker, error) {
	set, err := secrets.Unseal(spec.Secrets)
	if err != nil {
		return nil, err
	}
	var login *broker.ClaudeLogin
	if l := spec.Login; l != nil {
		if login, err = newLogin(*l, runAs); err != nil {
			// The sandbox's copy stays empty: Claude Code there asks to log in.
			log.Log(sessionlog.Entry{Service: "secret", Decision: sessionlog.Note, Target: broker.LoginSecretName,
				Reason: "Claude Code's login is not handled: " + err.Error()})
			login = nil
		}
	}
	ca, err := broker.NewCA(broker.CAOptions{Hosts: broker.Hosts(set, login), Label: spec.Label})
	if err != nil {
		return nil, err
	}
	getenv := func(name string) string {
		if name == "SSL_CERT_FILE" {
			return spec.Roots
		}
		return ""
	}
	_, system, err := broker.SystemBundle(getenv)
	if err != nil {
		// The sandbox's clients then trust the CA alone: the bound hosts
		// work, every other TLS host fails to verify, and the log says why.
		log.Log(sessionlog.Entry{Service: "secret", Decision: sessionlog.Note, Reason: err.Error()})
	}
	if spec.TrustDir != "" {
		files, err := ca.WriteTrust(spec.TrustDir, system)
		if err != nil {
			return nil, err
		}
		if spec.ChromiumDir != "" {
			// Chromium reads no variable: its managed policy directory.
			policy, err := os.ReadFile(files.ChromiumPolicy)
			if err == nil {
				err = atomicfile.Write(filepath.Join(spec.ChromiumDir, broker.ChromiumPolicyFile), policy, 0o644)
			}
			if err != nil {
				return nil, err
			}
		}
	}
	var roots *x509.CertPool
	if len(system) > 0 {
		roots = x509.NewCertPool()
		roots.AppendCertsFromPEM(system)
	}
	return broker.New(broker.Options{CA: ca, Secrets: set, Login: login, Log: log, Roots: roots})
}

// newLogin reads the host's Claude Code login and writes the sandbox's
// copy, with placeholders, into the file bound over the credentials
// inside: in place, since the bind holds that file's inode.
func newLogin(spec control.LoginSpec, runAs *control.RunAs) (*broker.ClaudeLogin, error) {
	login, err := broker.NewClaudeLogin(broker.LoginOptions{ConfigDir: spec.ConfigDir, APIHosts: spec.APIHosts, TokenHosts: spec.TokenHosts})
	if err != nil {
		return nil, err
	}
	data, err := login.SandboxCredentials()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(spec.SandboxFile, os.O_WRONLY|os.O_TRUNC|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return nil, err
	}
	if runAs != nil {
		// Claude Code inside, as this user, saves its refreshed copy there.
		if err := f.Chown(runAs.UID, runAs.GID); err != nil {
			return nil, err
		}
	}
	return login, nil
}

func listener(fds Inherited, fd int, what string) (net.Listener, error) {
	f, err := fds(fd)
	if err != nil {
		return nil, fmt.Errorf("the %s socket: %w", what, err)
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("the %s socket: %w", what, err)
	}
	return ln, nil
}

// nixService is the Nix daemon gateway. It learns how the host daemon
// builds when the first client connects, not at start (most sandboxes
// never use Nix, and the probe runs a nix process that would compete with
// the sandbox's start for the CPU); that client and any later one wait in
// the listener's queue meanwhile, never reach the daemon unjudged.
type nixService struct {
	spec  control.NixSpec
	ln    net.Listener
	log   sessionlog.Logger
	fetch func(drvPath string, urls []string) (bool, string)
}

func (n *nixService) Name() string { return "nix" }

func (n *nixService) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = n.ln.Close() })
	defer stop()
	first, err := n.ln.Accept()
	if err != nil {
		if ctx.Err() != nil {
			return nil // the sandbox ended before anyone asked
		}
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	facts, err := nixgate.ProbeHost(pctx, nixgate.ProbeOptions{Socket: n.spec.Socket, ConfDir: n.spec.ConfDir})
	cancel()
	if ctx.Err() != nil {
		first.Close()
		return nil
	}
	if err != nil {
		// Unknown counts as not sandboxed: builds are refused unless
		// opted in, queries still work.
		n.log.Log(sessionlog.Entry{Service: "nix", Decision: sessionlog.Note, Reason: "could not learn how the host daemon builds: " + err.Error()})
	}
	gw := nixgate.New(nixgate.Config{
		Socket:                 n.spec.Socket,
		Host:                   facts,
		AllowUnsandboxedBuilds: n.spec.AllowUnsandboxedBuilds,
		Network:                n.spec.Network,
		FetchPolicy:            n.fetch,
		Logger:                 n.log,
	})
	return gw.Serve(ctx, &acceptedFirst{Listener: n.ln, first: first})
}

// acceptedFirst is a listener whose first connection was already taken.
type acceptedFirst struct {
	net.Listener
	mu    sync.Mutex
	first net.Conn
}

func (l *acceptedFirst) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.first
	l.first = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	return l.Listener.Accept()
}

// netService is the egress proxy on its listeners: those the launcher
// made before the sandbox started, and those it hands over later (a
// socket on the sandbox's own loopback, made once the sandbox is up).
type netService struct {
	srv    *egress.Server
	policy *egress.Policy
	lns    []net.Listener
}

func newNetService(spec control.NetSpec, fds Inherited, log sessionlog.Logger, intercept egress.Interceptor) (*netService, error) {
	mode, err := egress.ParseMode(spec.Mode)
	if err != nil {
		return nil, err
	}
	rules := func(in []control.Rule) ([]egress.Rule, error) {
		var out []egress.Rule
		for _, r := range in {
			parsed, err := egress.ParseRules([]string{r.Text})
			if err != nil {
				return nil, err
			}
			for i := range parsed {
				parsed[i].Source = r.Source
			}
			out = append(out, parsed...)
		}
		return out, nil
	}
	allow, err := rules(spec.Allow)
	if err != nil {
		return nil, err
	}
	deny, err := rules(spec.Deny)
	if err != nil {
		return nil, err
	}
	var up *egress.Upstream
	if spec.Upstream != "" {
		env := map[string]string{"HTTPS_PROXY": spec.Upstream, "HTTP_PROXY": spec.Upstream, "NO_PROXY": spec.NoProxy}
		if up, err = egress.UpstreamFromEnv(func(k string) string { return env[k] }); err != nil {
			return nil, err
		}
	}
	policy := egress.NewPolicy(mode, allow, deny)
	srv, err := egress.New(egress.Options{Policy: policy, Log: log, Upstream: up, Intercept: intercept})
	if err != nil {
		return nil, err
	}
	svc := &netService{srv: srv, policy: policy}
	for _, fd := range spec.ListenerFDs {
		ln, err := listener(fds, fd, "egress proxy")
		if err != nil {
			return nil, err
		}
		svc.lns = append(svc.lns, ln)
	}
	return svc, nil
}

func (n *netService) Name() string { return "net" }

func (n *netService) addListener(f *os.File) error {
	ln, err := net.FileListener(f)
	if err != nil {
		return err
	}
	go func() { _ = n.srv.Serve(ln) }()
	return nil
}

// fetchPolicy decides a fixed-output derivation's downloads by the
// sandbox's own rules: every URL it declares must be allowed.
func (n *netService) fetchPolicy(_ string, urls []string) (bool, string) {
	if len(urls) == 0 {
		return false, "a download that names no URL"
	}
	rule := ""
	for _, u := range urls {
		ok, r := n.policy.AllowURL(u)
		if !ok {
			return false, r
		}
		rule = r
	}
	return true, rule
}

func (n *netService) Serve(ctx context.Context) error {
	for _, ln := range n.lns {
		go func(ln net.Listener) { _ = n.srv.Serve(ln) }(ln)
	}
	<-ctx.Done()
	return n.srv.Close()
}
