package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
	"github.com/claude-sandbox/claude-sandbox/secrets"
)

// Status is a check's outcome.
type Status string

const (
	OK   Status = "ok"   // works
	Fail Status = "fail" // broken: the fix says what to do
	Warn Status = "warn" // works, but not fully, or could not be tried
	None Status = "none" // not present, and nothing needs it (no display, no agent)
)

func (s Status) symbol() string {
	switch s {
	case OK:
		return "✓"
	case Fail:
		return "✗"
	case Warn:
		return "!"
	}
	return "–"
}

// Check is one finding.
type Check struct {
	ID     string `json:"id"`
	Title  string `json:"title"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
	// NeededBy are the backends that cannot run while this check fails.
	NeededBy []string `json:"neededBy,omitempty"`
	Millis   int64    `json:"ms"`
}

// Report is every check, in a fixed order.
type Report struct {
	DefaultBackend string          `json:"defaultBackend"`
	Backends       map[string]bool `json:"backends"` // can each backend run here
	OK             bool            `json:"ok"`       // the default backend can run
	Checks         []Check         `json:"checks"`
}

// Env is what the checks need from the caller.
type Env struct {
	Getenv         func(string) string
	EUID           int
	Dirs           closure.Dirs
	Nixpkgs        closure.NixpkgsChoice
	DefaultBackend string
	System         string // Nix system, e.g. x86_64-linux
	NoDesktop      bool   // --no-desktop / desktop = false: nothing of the desktop is forwarded
	NoNetwork      bool   // --no-network / network = false
	// NixUnsandboxedBuilds: --nix-unsandboxed-builds / nix-unsandboxed-builds = true.
	NixUnsandboxedBuilds bool
	// Protect and Unprotect: what launches keep from being changed inside
	// (--protect, --unprotect, the configuration), as launch.Runtime has them.
	Protect   bool
	Unprotect []string
	// KVMTimeout bounds the guest boot under KVM (default 10 s). A working
	// KVM guest prints its first kernel line well within a second.
	KVMTimeout time.Duration
	Log        zerolog.Logger
	// Secrets are the secret bindings in effect (built-ins and the user's
	// [secrets]): each gets a line, never its value.
	Secrets []secrets.Binding
}

// backends are the backends a verdict is given for: the buildable ones.
var backends = nixgen.Backends

type checkFunc func(ctx context.Context, env *Env) Check

// Run performs every check. They run concurrently (the KVM boot takes
// seconds, the rest milliseconds); the report keeps a fixed order.
func Run(ctx context.Context, env *Env) *Report {
	if env.KVMTimeout == 0 {
		env.KVMTimeout = 10 * time.Second
	}
	if env.DefaultBackend == "" {
		env.DefaultBackend = "bubblewrap"
	}
	funcs := []checkFunc{
		checkNix, checkDaemon, checkNixGateway, checkStore, checkNixpkgs,
		checkBwrap, checkUserNSLimits,
		checkNspawn, checkRoot,
		checkKVM, checkQEMU, checkVirtiofsd, checkGuestStores,
		checkDisplay, checkAudio, checkDBus, checkSSHAgent,
		checkCache, checkGCRoots, checkDisk,
		checkProtection,
	}
	checks := make([]Check, len(funcs))
	var secretLines []Check
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		secretLines = secretChecks(ctx, env)
	}()
	for i, f := range funcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			c := f(ctx, env)
			c.Millis = time.Since(start).Milliseconds()
			checks[i] = c
		}()
	}
	wg.Wait()
	checks = append(checks, secretLines...)
	r := &Report{DefaultBackend: env.DefaultBackend, Backends: map[string]bool{}, Checks: checks}
	for _, b := range backends {
		r.Backends[b] = true
	}
	for _, c := range checks {
		if c.Status != Fail {
			continue
		}
		for _, b := range c.NeededBy {
			r.Backends[b] = false
		}
	}
	r.OK = r.Backends[env.DefaultBackend]
	return r
}

// Get returns the check with an id.
func (r *Report) Get(id string) (Check, bool) {
	for _, c := range r.Checks {
		if c.ID == id {
			return c, true
		}
	}
	return Check{}, false
}

// WriteText prints the report for a person: one line a check, its fix
// under it, and a verdict per backend.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "%s %s: %s\n", c.Status.symbol(), c.Title, c.Detail)
		if c.Fix != "" && (c.Status == Fail || c.Status == Warn) {
			fmt.Fprintf(&b, "    fix: %s\n", c.Fix)
		}
	}
	b.WriteString("\n")
	for _, name := range backends {
		verdict := "can run"
		if !r.Backends[name] {
			var why []string
			for _, c := range r.Checks {
				if c.Status == Fail && slices.Contains(c.NeededBy, name) {
					why = append(why, c.Title)
				}
			}
			verdict = "cannot run (" + strings.Join(why, ", ") + ")"
		}
		mark := " "
		if name == r.DefaultBackend {
			mark = "*"
		}
		fmt.Fprintf(&b, "%s %-10s %s\n", mark, name, verdict)
	}
	fmt.Fprintf(&b, "(* the default backend)\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the report for scripts.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
