package launch

import (
	"context"
	"os"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// Backend is what a sandbox backend implements: the contract between the
// launch core and the packages under launch/ (bubblewrap, container, vm).
// The core decides what crosses into a sandbox and when; a backend renders
// that into its mechanism's terms and runs it. launch/backends picks one by
// name.
type Backend interface {
	// Name is the backend's name, as in manifests, records and --backend.
	Name() string
	// Traits are what the core asks of the backend before deciding.
	Traits() Traits

	// Check says whether this host and user can start the backend's
	// sandboxes (user namespaces, root). It runs once, before a build that
	// could take minutes, and never for --dry-run.
	Check(rt *Runtime) error
	// Plan completes p for this backend: its mounts, environment and the
	// rendered invocation. It may read the host but writes nothing
	// anywhere; what must exist first goes into p.Prepare.
	Plan(p *Plan, m *manifest.Manifest, rt *Runtime) error
	// Start runs a planned sandbox, registered as rec, once the core has
	// prepared the host. A backend that becomes its sandbox (exec) returns
	// only on failure; one that supervises returns when the sandbox has
	// ended, with an *ExitStatusError for the command's failure.
	Start(ctx context.Context, p *Plan, rec *Record) error

	// Enter runs argv (decided by EnterCommand or the launch) inside a
	// running sandbox and returns its exit status as an *ExitStatusError
	// when it is not zero. When the sandbox ended before argv could start,
	// the error is a *NotRunningError or an *EnterError with Ended set.
	// A supervised sandbox's session says which process to join (Target).
	Enter(ctx context.Context, s *Session, rt *Runtime, argv []string) error
	// Stop ends a running sandbox: gracefully first, then by force.
	Stop(ctx context.Context, rec *Record) error
	// Status is a short description of a running sandbox's state for `ps`
	// ("" when the record says all there is).
	Status(ctx context.Context, rec *Record) string
}

// Spawner is a backend whose sandbox lives under a supervisor: Spawn
// starts it detached, running only a keeper that holds it open while the
// lifetime pipe (its read end given here) stays open; every session,
// this launch's first, then joins it with Enter. The supervisor ends it.
type Spawner interface {
	Spawn(ctx context.Context, p *Plan, lifetime *os.File) (*Started, error)
}

// Traits are the facts about a backend the core decides with.
type Traits struct {
	// NeedsRoot: its sandboxes start only as root (--sudo helps).
	NeedsRoot bool
	// UserNamespaces: it needs unprivileged user namespaces (when not root).
	UserNamespaces bool
	// Tmux: it can run the program inside tmux with the socket in the
	// project state directory (--tmux).
	Tmux bool
	// NetworkInClosure: the network switch is built into the closure
	// rather than chosen at launch (nixgen.NetworkInClosure says the same
	// for the build side; launch/backends tests that they agree).
	NetworkInClosure bool
	// SecretBroker: its supervisor's proxy brokers secrets, so the sandbox
	// holds placeholders (and SecretMounts) instead of values.
	SecretBroker bool
	// SessionsThroughSupervisor: its sessions run through its supervisor
	// (a VM's guest agent) rather than by entering the sandbox's
	// namespaces; Enter asks the supervisor itself (control.OpExec).
	SessionsThroughSupervisor bool
	// Protects: it renders the plan's protection (Plan.Protected, covered
	// by the mounts of ProjectProtection and ClaudeHome), so the session
	// notice may tell Claude what is read-only.
	Protects bool
	// ListensOnJoin: Enter makes a first session's Session.Listen socket
	// as it joins the sandbox, before the command starts (one fork for
	// both); otherwise the core makes it beforehand.
	ListensOnJoin bool
	// Persistence is what the session notice tells Claude Code outlives the
	// sandbox besides the project and ~/.claude; "" tells nothing more.
	Persistence string
}
