// Command claude-sandbox-supervisor is the host-side process of one running
// sandbox (package supervisor). claude-sandbox starts it; it is not meant to
// be run by hand. It is a program of its own so that the launcher, which
// every sandbox start runs, never links the supervisor's services.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/claude-sandbox/claude-sandbox/egress"
	"github.com/claude-sandbox/claude-sandbox/internal/placeholder"
	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
	"github.com/claude-sandbox/claude-sandbox/nixgate"
	"github.com/claude-sandbox/claude-sandbox/secrets"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
	"github.com/claude-sandbox/claude-sandbox/supervisor"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// maxSpec bounds the launcher's spec.
const maxSpec = 4 << 20

func main() {
	os.Exit(run())
}

func run() int {
	if len(os.Args) > 1 && os.Args[1] == "probe-nix" {
		return probeNix(os.Args[2:])
	}
	if len(os.Args) > 1 && os.Args[1] == "check-rules" {
		return checkRules()
	}
	data, err := io.ReadAll(io.LimitReader(os.Stdin, maxSpec))
	os.Stdin.Close()
	if err != nil {
		return fail("reading the spec: %v", err)
	}
	var spec control.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return fail("the spec: %v", err)
	}
	// Held for the sandbox's life by this process alone: a program it
	// starts must not keep a placeholder's lock after it.
	for _, ph := range spec.Placeholders {
		if ph.FD > 2 {
			syscall.CloseOnExec(ph.FD)
		}
	}
	// Until the end: a terminal's hang-up or a Ctrl-C of the launcher's
	// process group must not end the sandbox under its other sessions.
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()

	var log sessionlog.Logger = sessionlog.Discard
	if spec.LogPath != "" {
		f, err := sessionlog.Open(spec.LogPath, spec.ID)
		if err != nil {
			return fail("opening the session log: %v", err)
		}
		defer f.Close()
		log = f
	}
	fds := func(fd int) (*os.File, error) {
		if fd < 3 {
			return nil, fmt.Errorf("descriptor %d was not passed", fd)
		}
		f := os.NewFile(uintptr(fd), fmt.Sprintf("fd%d", fd))
		if f == nil {
			return nil, fmt.Errorf("descriptor %d was not passed", fd)
		}
		return f, nil
	}
	sv, err := supervisor.FromSpec(ctx, spec, fds, log)
	if err != nil {
		log.Log(sessionlog.Entry{Service: "supervisor", Decision: sessionlog.Note, Reason: "could not start: " + err.Error()})
		return fail("%v", err)
	}
	if r := spec.RunAs; r != nil {
		// Everything root was needed for is in hand (descriptors, the
		// log): from here the host's daemon, agent and network see the
		// user the sandbox runs for. syscall's set*id apply to every thread.
		if err := dropTo(r); err != nil {
			return fail("becoming uid %d: %v", r.UID, err)
		}
	}
	log.Log(sessionlog.Entry{Service: "supervisor", Decision: sessionlog.Note, Op: "start", Target: spec.Project})
	sv.AfterEnd = func(err error) {
		reason := "ended"
		if err != nil {
			reason = "ended: " + err.Error()
		}
		log.Log(sessionlog.Entry{Service: "supervisor", Decision: sessionlog.Note, Op: "end", Reason: reason})
		releasePlaceholders(spec, sv, fds, log)
		if spec.RunDir != "" {
			_ = os.RemoveAll(spec.RunDir)
		}
	}
	if err = sv.Run(ctx); err != nil {
		return fail("%v", err)
	}
	return 0
}

// releasePlaceholders gives up the placeholders the sandbox held, once it
// has ended (its mounts are gone with it): each goes if no other sandbox
// holds it and it is still empty. A sandbox that did not end leaves them
// to the next launch, which finds them recorded.
func releasePlaceholders(spec control.Spec, sv *supervisor.Supervisor, fds func(int) (*os.File, error), log sessionlog.Logger) {
	select {
	case <-sv.Sandbox.Done():
	default:
		return
	}
	for _, ph := range spec.Placeholders {
		f, err := fds(ph.FD)
		if err != nil {
			continue
		}
		removed, err := placeholder.Release(ph.Path, f, ph.Recorded, spec.PlaceholderRecords)
		switch {
		case err != nil:
			log.Log(sessionlog.Entry{Service: "protect", Decision: sessionlog.Note, Op: "placeholder", Target: ph.Path, Reason: "not removed: " + err.Error()})
		case removed:
			log.Log(sessionlog.Entry{Service: "protect", Decision: sessionlog.Note, Op: "placeholder", Target: ph.Path, Reason: "removed"})
		}
	}
}

func fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "claude-sandbox-supervisor: "+format+"\n", args...)
	return 1
}

func dropTo(r *control.RunAs) error {
	if err := syscall.Setgroups(r.Groups); err != nil {
		return err
	}
	if err := syscall.Setresgid(r.GID, r.GID, r.GID); err != nil {
		return err
	}
	return syscall.Setresuid(r.UID, r.UID, r.UID)
}

// probeNix is `claude-sandbox doctor`'s question, asked here so that the
// launcher never links the gateway: how the host daemon builds, whether it
// trusts this user, and what a sandbox's gateway would therefore allow.
// It prints one JSON object.
func probeNix(args []string) int {
	fs := flag.NewFlagSet("probe-nix", flag.ContinueOnError)
	allow := fs.Bool("allow-unsandboxed-builds", false, "")
	network := fs.Bool("network", true, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	facts, err := nixgate.ProbeHost(ctx, nixgate.ProbeOptions{
		Socket: nixdaemon.SocketPath(), ConfDir: os.Getenv("NIX_CONF_DIR"), VerifySandbox: true,
	})
	out := struct {
		Sandboxed bool     `json:"sandboxed"`
		Explain   []string `json:"explain"`
		Error     string   `json:"error,omitempty"`
	}{Sandboxed: facts.Sandbox.Sandboxed()}
	if err != nil {
		out.Error = err.Error()
	}
	out.Explain = nixgate.Explain(facts, nixgate.Config{AllowUnsandboxedBuilds: *allow, Network: *network})
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 1
	}
	return 0
}

// checkRules is a launch's question before it starts a sandbox: can the
// proxy use these allow and deny rules? It reads a NetSpec's rules on
// standard input and prints {} or the first bad rule, where it was
// written, what is wrong and how to write it.
func checkRules() int {
	var spec control.RulesCheck
	if err := json.NewDecoder(io.LimitReader(os.Stdin, maxSpec)).Decode(&spec); err != nil {
		return fail("check-rules: %v", err)
	}
	var out struct {
		Rule   string `json:"rule,omitempty"`
		Source string `json:"source,omitempty"`
		Error  string `json:"error,omitempty"`
		Hint   string `json:"hint,omitempty"`
	}
	for _, r := range append(spec.Allow, spec.Deny...) {
		if _, err := egress.ParseRules([]string{r.Text}); err != nil {
			out.Rule, out.Source, out.Error = r.Text, r.Source, err.Error()
			var re *egress.RuleError
			if errors.As(err, &re) {
				out.Error, out.Hint = re.Msg, re.Hint()
			}
			break
		}
	}
	for _, h := range spec.SecretHosts {
		if out.Error != "" {
			break
		}
		if err := checkSecretHost(h.Text); err != nil {
			out.Rule, out.Source, out.Error = h.Text, h.Source, err.Error()
			out.Hint = `name a domain someone owns: "*.example.com", not "*.com"`
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 1
	}
	return 0
}

// checkSecretHost refuses a secret's host that would send it to every
// domain under a public suffix ("*.co.uk").
func checkSecretHost(text string) error {
	p, err := secrets.ParseHost(text)
	if err != nil {
		return err
	}
	if d, wildcard := p.WildcardDomain(); wildcard && egress.IsPublicSuffix(d) {
		return fmt.Errorf("would send the secret to every domain under the public suffix %q", d)
	}
	return nil
}
