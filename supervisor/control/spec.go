package control

import "github.com/claude-sandbox/claude-sandbox/secrets"

// Spec is what a launcher hands a new supervisor, as JSON on its standard
// input (a pipe: never the command line or the environment, since it may
// carry secret values). Descriptors are numbered as the supervisor
// receives them: 3 is the first of the launcher's ExtraFiles.
type Spec struct {
	ID       string `json:"id"`       // the sandbox's registry id
	Project  string `json:"project"`  // the project directory
	Backend  string `json:"backend"`  // bubblewrap, container, vm
	StateDir string `json:"stateDir"` // the project's state directory
	RunDir   string `json:"runDir"`   // this sandbox's sockets
	LogPath  string `json:"logPath"`  // the session log
	// Record is the registry record the launcher wrote; it goes when the
	// sandbox is decided to end, so no launch finds an ending sandbox.
	Record string `json:"record"`

	// RunAs: a supervisor started by root (the container backend) takes
	// this user's identity once it holds its descriptors, so the host's
	// Nix daemon, SSH agent and network see the user, not root.
	RunAs *RunAs `json:"runAs,omitempty"`

	ControlFD      int `json:"controlFd"`                // the listening control socket
	FirstSessionFD int `json:"firstSessionFd,omitempty"` // the starting launcher's session (0: none)

	// Exactly one of these says how the sandbox process came to be.
	Adopted *AdoptedSpec `json:"adopted,omitempty"`
	VM      *VMSpec      `json:"vm,omitempty"`

	// Placeholders are the empty directories that hold missing protected
	// names for the sandbox (package placeholder): each descriptor carries
	// a shared lock for the sandbox's life, and once the sandbox has ended
	// the supervisor removes the directory if no other sandbox holds it.
	// PlaceholderRecords is where the project's state records them.
	Placeholders       []PlaceholderSpec `json:"placeholders,omitempty"`
	PlaceholderRecords string            `json:"placeholderRecords,omitempty"`

	Nix      *NixSpec      `json:"nix,omitempty"`
	Net      *NetSpec      `json:"net,omitempty"`
	SSHAgent *SSHAgentSpec `json:"sshAgent,omitempty"`
	Broker   *BrokerSpec   `json:"broker,omitempty"`
}

// BrokerSpec configures the credential broker: the egress proxy
// terminates TLS for the hosts these secrets are bound to (with a CA the
// supervisor makes, whose key never leaves it) and puts the real values
// in place of the placeholders the sandbox holds. Net must be set too.
type BrokerSpec struct {
	// Secrets carry real values: this spec travels on a pipe only.
	Secrets []secrets.Sealed `json:"secrets"`
	// TrustDir is a host directory, bound read-only into the sandbox,
	// where the supervisor writes the CA's certificate (broker.WriteTrust's
	// files) before it answers the first session.
	TrustDir string `json:"trustDir"`
	// ChromiumDir is the host directory bound at Chromium's managed
	// policy directory, where the supervisor adds the CA's policy
	// ("": none).
	ChromiumDir string `json:"chromiumDir,omitempty"`
	// Roots is a PEM bundle of the CAs real hosts are verified against
	// ("": the host's system roots): the launcher's SSL_CERT_FILE.
	Roots string `json:"roots,omitempty"`
	// Label names the sandbox in the CA's subject.
	Label string `json:"label,omitempty"`
	// Login keeps Claude Code's OAuth login outside (nil: not handled).
	Login *LoginSpec `json:"login,omitempty"`
}

// LoginSpec: the sandbox gets a copy of Claude Code's credentials file
// holding placeholders, written by the supervisor into SandboxFile (bound
// over ~/.claude/.credentials.json inside, so written in place); the
// proxy puts the host's tokens into requests to APIHosts and performs
// refreshes at TokenHosts with the host's file.
type LoginSpec struct {
	ConfigDir   string   `json:"configDir"` // the host's ~/.claude
	SandboxFile string   `json:"sandboxFile"`
	APIHosts    []string `json:"apiHosts,omitempty"`   // nil: api.anthropic.com
	TokenHosts  []string `json:"tokenHosts,omitempty"` // nil: Claude Code's token hosts
}

// AdoptedSpec hands over a sandbox process the launcher started itself,
// by pid and start time (the supervisor is started before the sandbox,
// so that its own start-up overlaps the sandbox's: it takes its handles
// on the processes itself).
type AdoptedSpec struct {
	OuterPID   int    `json:"outerPid"`   // the sandbox process (bwrap)
	OuterStart uint64 `json:"outerStart"` // its start time (proc.StartTime)
	InitPID    int    `json:"initPid"`    // the sandbox's init: where sessions join
	InitStart  uint64 `json:"initStart"`
	LifetimeFD int    `json:"lifetimeFd"` // write end of the keeper's lifetime pipe
}

// PlaceholderSpec is one held placeholder.
type PlaceholderSpec struct {
	Path     string `json:"path"`
	FD       int    `json:"fd"`
	Recorded bool   `json:"recorded"` // a sandbox made it: the last to end removes it
}

// NixSpec configures the Nix daemon gateway.
type NixSpec struct {
	ListenerFD int `json:"listenerFd"`
	// Socket is the host daemon's socket.
	Socket string `json:"socket"`
	// ConfDir is where that daemon's nix.conf is, when not /etc/nix (the
	// launcher's NIX_CONF_DIR): how it builds is read from there.
	ConfDir                string `json:"confDir,omitempty"`
	AllowUnsandboxedBuilds bool   `json:"allowUnsandboxedBuilds,omitempty"`
	Network                bool   `json:"network,omitempty"` // the sandbox's network is open
}

// NetSpec configures the egress proxy.
type NetSpec struct {
	// ListenerFDs are the proxy's listeners: a Unix socket bound into
	// the sandbox, or a loopback TCP socket made inside its network
	// namespace.
	ListenerFDs []int  `json:"listenerFds"`
	Mode        string `json:"mode"` // open, allowlist, learn
	Allow       []Rule `json:"allow,omitempty"`
	Deny        []Rule `json:"deny,omitempty"`
	// Upstream is the corporate proxy allowed destinations go through
	// ("" for none), as the host's HTTPS_PROXY names it.
	Upstream string `json:"upstream,omitempty"`
	NoProxy  string `json:"noProxy,omitempty"`
}

// Rule is one allow or deny rule as written, and where.
// RulesCheck is what `claude-sandbox-supervisor check-rules` reads: a
// launch's rules, and its secrets' wildcard hosts, which must not cover a
// public suffix (the list lives with the proxy's rules, which only the
// supervisor links).
type RulesCheck struct {
	Allow       []Rule `json:"allow,omitempty"`
	Deny        []Rule `json:"deny,omitempty"`
	SecretHosts []Rule `json:"secretHosts,omitempty"`
}

type Rule struct {
	Text   string `json:"text"`
	Source string `json:"source,omitempty"` // e.g. claude-sandbox.toml:7
}

// SSHAgentSpec configures the filtering SSH agent.
type SSHAgentSpec struct {
	ListenerFD int      `json:"listenerFd"`
	Upstream   string   `json:"upstream"` // the host's SSH_AUTH_SOCK
	Keys       []string `json:"keys"`     // nil: every key of the host agent
}

// RunAs is a user identity.
type RunAs struct {
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups,omitempty"`
}

// VMSpec has the supervisor start and own a QEMU guest: what to run is the
// launcher's decision (its plan), the supervisor only runs it. Socket and
// file names are relative to RunDir, QEMU's working directory.
type VMSpec struct {
	QEMU      []string `json:"qemu"`                // argv, [0] the binary
	Env       []string `json:"env"`                 // QEMU's whole environment
	RunDir    string   `json:"runDir"`              // QEMU's working directory
	Virtiofsd []string `json:"virtiofsd,omitempty"` // argv of virtiofsd, when the project goes over virtiofs
	// Accel is "kvm" or "tcg"; a KVM guest silent for a while is stuck.
	Accel   string `json:"accel"`
	AutoKVM bool   `json:"autoKvm,omitempty"`
	// The guest's Nix store overlay: an ext4 image QEMU gives the guest.
	// Store is its path; a missing one is created with StoreMiB and Mkfs
	// (mkfs.ext4). StoreLock, when set, is held for the VM's life: a
	// store another VM of the project still uses is waited for.
	Store     string `json:"store"`
	StoreMiB  int    `json:"storeMiB"`
	StoreLock string `json:"storeLock,omitempty"`
	Mkfs      string `json:"mkfs"`
	// KeepBootLog is where a failed boot's console log is kept.
	KeepBootLog string `json:"keepBootLog"`
}
