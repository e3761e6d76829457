package nixgate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
)

// SandboxMode is the host daemon's `sandbox` setting.
type SandboxMode string

const (
	SandboxOn      SandboxMode = "true"
	SandboxOff     SandboxMode = "false"
	SandboxRelaxed SandboxMode = "relaxed" // fixed-output and __noChroot derivations run unsandboxed
	SandboxUnknown SandboxMode = ""        // not found out: treated as off
)

// Sandboxed reports whether every build the daemon runs is sandboxed.
// Relaxed is not: a derivation asking for __noChroot runs outside.
func (m SandboxMode) Sandboxed() bool { return m == SandboxOn }

// HostFacts is what the gateway's policy depends on about the host daemon.
type HostFacts struct {
	Socket           string
	DaemonNixVersion string // from the handshake (protocol ≥ 1.33), else the CLI's
	DaemonProtocol   nixdaemon.ProtocolVersion
	Sandbox          SandboxMode
	SandboxFallback  bool // sandbox-fallback: builds run unsandboxed where the kernel cannot sandbox
	// SandboxVerified says whether a probe build showed the daemon really
	// sandboxing (ProbeOptions.VerifySandbox); SandboxProbe says what the
	// probe found, when one ran.
	SandboxVerified bool
	SandboxProbe    string
	ConfigSource    string // how Sandbox and TrustedUsers were found out
	Trust           nixdaemon.TrustStatus
	TrustSource     string // "the daemon's handshake" or "trusted-users in the daemon's nix.conf"
	TrustedUsers    []string
}

// ProbeOptions says where the host daemon is and how to ask about it. The
// zero value probes the standard multi-user install.
type ProbeOptions struct {
	Socket  string // default nixdaemon.SocketPath()
	Nix     string // the nix CLI; default "nix" on PATH
	ConfDir string // the daemon's NIX_CONF_DIR; default the CLI's own (/etc/nix)
	// User is whose trust to judge from trusted-users when the daemon is
	// too old to say (protocol < 1.35); default the current user.
	User *user.User
	// VerifySandbox, where the daemon says sandbox = true but would fall
	// back (sandbox-fallback = true, Nix's default), builds a probe
	// derivation to see whether builds really run sandboxed: a daemon in a
	// chroot or an unprivileged container cannot make mount and PID
	// namespaces and then builds unsandboxed without a word. The probe is a
	// fixed shell script that only looks for the daemon's database; it
	// costs one build (about a second).
	VerifySandbox bool
}

// ProbeHost asks the host's Nix how its daemon builds and whether it
// trusts this user.
//
// The sandbox setting comes from the host's Nix itself: `nix config show
// --json` (Nix ≥ 2.20; `nix show-config --json` before), run with the
// daemon's NIX_CONF_DIR, without user configuration files
// (NIX_USER_CONF_FILES empty, NIX_CONFIG unset) since the daemon reads
// none. That is the daemon's nix.conf with its includes and Nix's own
// defaults (sandbox defaults to true on Linux), interpreted by Nix rather
// than by a re-implementation of its configuration parser. No protocol
// operation reports a daemon setting, and building a probe derivation
// would run code on a host that may not sandbox it. Trust comes from the
// handshake where the daemon sends it (≥ 1.35), else from trusted-users.
func ProbeHost(ctx context.Context, opts ProbeOptions) (HostFacts, error) {
	facts := HostFacts{Socket: opts.Socket}
	if facts.Socket == "" {
		facts.Socket = nixdaemon.SocketPath()
	}
	c, err := nixdaemon.Dial(ctx, facts.Socket)
	if err != nil {
		return facts, fmt.Errorf("nixgate: probing the host Nix daemon: %w", err)
	}
	facts.DaemonProtocol = c.ProtocolVersion()
	facts.DaemonNixVersion = c.DaemonNixVersion()
	facts.Trust = c.Trust()
	_ = c.Close()
	if facts.Trust != nixdaemon.TrustUnknown {
		facts.TrustSource = "the daemon's handshake"
	}

	cfg, source, err := showConfig(ctx, opts, newerThan(facts.DaemonNixVersion, 2, 20))
	if err != nil {
		return facts, err
	}
	facts.ConfigSource = source
	facts.Sandbox = cfg.sandbox
	facts.SandboxFallback = cfg.sandboxFallback
	if opts.VerifySandbox && facts.Sandbox == SandboxOn {
		facts.SandboxVerified, facts.SandboxProbe = verifySandbox(ctx, opts, facts.Socket)
		if facts.SandboxProbe == probeUnsandboxed {
			facts.Sandbox = SandboxOff
		}
	}
	facts.TrustedUsers = cfg.trustedUsers
	if facts.Trust == nixdaemon.TrustUnknown {
		u := opts.User
		if u == nil {
			if u, err = user.Current(); err != nil {
				return facts, fmt.Errorf("nixgate: who am I: %w", err)
			}
		}
		facts.Trust = nixdaemon.TrustNotTrusted
		if matchUser(u, cfg.trustedUsers) {
			facts.Trust = nixdaemon.TrustTrusted
		}
		facts.TrustSource = "trusted-users in the daemon's nix.conf"
	}
	return facts, nil
}

type hostConfig struct {
	sandbox         SandboxMode
	sandboxFallback bool
	trustedUsers    []string
}

// showConfig runs the host's nix to print its configuration as JSON.
// newCLIFirst tries `nix config show` (Nix ≥ 2.20) before `nix
// show-config`, saving a failed process where the daemon is that new.
func showConfig(ctx context.Context, opts ProbeOptions, newCLIFirst bool) (hostConfig, string, error) {
	nix := opts.Nix
	if nix == "" {
		nix = "nix"
	}
	env := nixEnv(opts, "")
	where := "the default NIX_CONF_DIR"
	if opts.ConfDir != "" {
		where = "NIX_CONF_DIR=" + opts.ConfDir
	}
	var lastErr error
	subs := [][]string{{"show-config"}, {"config", "show"}}
	if newCLIFirst {
		subs[0], subs[1] = subs[1], subs[0]
	}
	for _, sub := range subs {
		args := append([]string{"--extra-experimental-features", "nix-command"}, sub...)
		args = append(args, "--json")
		cmd := exec.CommandContext(ctx, nix, args...)
		cmd.Env = env
		cmd.WaitDelay = time.Second
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			lastErr = fmt.Errorf("%s %s: %w: %s", nix, strings.Join(sub, " "), err, lastLine(stderr.String()))
			continue
		}
		cfg, err := parseConfigJSON(out)
		if err != nil {
			return cfg, "", fmt.Errorf("nixgate: %s %s --json: %w", nix, strings.Join(sub, " "), err)
		}
		return cfg, fmt.Sprintf("`nix %s --json` with %s", strings.Join(sub, " "), where), nil
	}
	return hostConfig{}, "", fmt.Errorf("nixgate: asking the host's Nix for its configuration: %w", lastErr)
}

// nixEnv is the environment of a nix CLI asking the daemon at socket,
// without user configuration.
func nixEnv(opts ProbeOptions, socket string) []string {
	env := []string{"NIX_USER_CONF_FILES="}
	if socket != "" {
		env = append(env, "NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH="+socket)
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "NIX_CONFIG", "NIX_USER_CONF_FILES", "NIX_REMOTE", "NIX_DAEMON_SOCKET_PATH":
			continue
		case "NIX_CONF_DIR":
			if opts.ConfDir != "" {
				continue
			}
		}
		env = append(env, kv)
	}
	if opts.ConfDir != "" {
		env = append(env, "NIX_CONF_DIR="+opts.ConfDir)
	}
	return env
}

const (
	probeSandboxed   = "sandboxed"
	probeUnsandboxed = "unsandboxed: a probe build ran outside any sandbox (the daemon falls back where it cannot sandbox)"
)

// probeExpr is the probe derivation. Inside Nix's sandbox the daemon's
// database does not exist; outside it does. /bin/sh inside the sandbox
// comes from sandbox-paths (NixOS, Debian and the upstream installer set
// it). The nonce makes every probe a new build.
const probeExpr = `{ nonce }: derivation {
  name = "claude-sandbox-sandbox-probe";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "if [ -e /nix/var/nix/db ]; then echo claude-sandbox-probe: unsandboxed; exit 1; fi; echo ${nonce} > $out" ];
}`

// verifySandbox builds the probe and says whether the build was sandboxed
// and, if not verified, why.
func verifySandbox(ctx context.Context, opts ProbeOptions, socket string) (bool, string) {
	nix := opts.Nix
	dir := "" // the nix-* tools live beside nix
	if nix != "" && strings.Contains(nix, "/") {
		dir = nix[:strings.LastIndex(nix, "/")+1]
	}
	env := nixEnv(opts, socket)
	run := func(name string, args ...string) (string, string, error) {
		cmd := exec.CommandContext(ctx, dir+name, args...)
		cmd.Env = env
		cmd.WaitDelay = time.Second
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return strings.TrimSpace(stdout.String()), stderr.String(), err
	}
	nonce := strconv.FormatInt(time.Now().UnixNano(), 36)
	drv, errOut, err := run("nix-instantiate", "--argstr", "nonce", nonce, "-E", probeExpr)
	if err != nil {
		return false, "probe not run: nix-instantiate: " + lastLine(errOut)
	}
	_, errOut, err = run("nix-store", "--realise", drv)
	switch {
	case err == nil:
		return true, probeSandboxed
	case strings.Contains(errOut, "claude-sandbox-probe: unsandboxed"):
		return false, probeUnsandboxed
	}
	return false, "probe inconclusive: " + lastLine(errOut)
}

// newerThan reports whether Nix version v ("2.26.3", "2.18.1pre…") is at
// least major.minor.
func newerThan(v string, major, minor int) bool {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || (ma == major && mi >= minor)
}

func parseConfigJSON(b []byte) (hostConfig, error) {
	var raw map[string]struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return hostConfig{}, err
	}
	var cfg hostConfig
	sb, ok := raw["sandbox"]
	if !ok {
		return cfg, errors.New(`no "sandbox" setting in the output`)
	}
	var asBool bool
	var asString string
	switch {
	case json.Unmarshal(sb.Value, &asBool) == nil:
		cfg.sandbox = SandboxOff
		if asBool {
			cfg.sandbox = SandboxOn
		}
	case json.Unmarshal(sb.Value, &asString) == nil && asString == "relaxed":
		cfg.sandbox = SandboxRelaxed
	default:
		return cfg, fmt.Errorf("sandbox = %s: not true, false or relaxed", sb.Value)
	}
	if fb, ok := raw["sandbox-fallback"]; ok {
		_ = json.Unmarshal(fb.Value, &cfg.sandboxFallback)
	}
	if tu, ok := raw["trusted-users"]; ok {
		if err := json.Unmarshal(tu.Value, &cfg.trustedUsers); err != nil {
			return cfg, fmt.Errorf("trusted-users: %w", err)
		}
	}
	return cfg, nil
}

// matchUser is Nix's matchUser (src/nix/unix/daemon.cc): the name, "*",
// or "@group" for a group the user is in.
func matchUser(u *user.User, list []string) bool {
	if slices.Contains(list, "*") || slices.Contains(list, u.Username) {
		return true
	}
	gids, err := u.GroupIds()
	if err != nil {
		return false
	}
	for _, entry := range list {
		name, ok := strings.CutPrefix(entry, "@")
		if !ok {
			continue
		}
		for _, gid := range gids {
			if g, err := user.LookupGroupId(gid); err == nil && g.Name == name {
				return true
			}
		}
	}
	return false
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// Explain says, in sentences doctor prints, how the host daemon builds,
// whether it trusts this user, and what the gateway with cfg will
// therefore allow inside the sandbox.
func Explain(h HostFacts, cfg Config) []string {
	var out []string
	ver := h.DaemonNixVersion
	if ver == "" {
		ver = "unknown version"
	}
	out = append(out, fmt.Sprintf("host Nix daemon: Nix %s, worker protocol %s, at %s", ver, h.DaemonProtocol, h.Socket))
	switch {
	case h.Sandbox == SandboxOn && h.SandboxVerified:
		out = append(out, "host builds: sandboxed (sandbox = true, and a probe build ran sandboxed)")
	case h.Sandbox == SandboxOn && h.SandboxFallback:
		s := "host builds: sandboxed (sandbox = true; but sandbox-fallback = true makes the daemon build unsandboxed, silently, where it cannot sandbox"
		if h.SandboxProbe != "" {
			s += "; " + h.SandboxProbe
		}
		out = append(out, s+")")
	case h.Sandbox == SandboxOn:
		out = append(out, "host builds: sandboxed (sandbox = true, sandbox-fallback = false)")
	case h.Sandbox == SandboxUnknown:
		out = append(out, "host builds: unknown whether sandboxed; treated as not sandboxed")
	case h.SandboxProbe == probeUnsandboxed:
		out = append(out, "host builds: not sandboxed (nix.conf says sandbox = true, but "+strings.TrimPrefix(h.SandboxProbe, "unsandboxed: ")+")")
	default:
		out = append(out, fmt.Sprintf("host builds: not sandboxed (sandbox = %s)", h.Sandbox))
	}
	if h.ConfigSource != "" {
		out[len(out)-1] += ", from " + h.ConfigSource
	}
	switch h.Trust {
	case nixdaemon.TrustTrusted:
		out = append(out, fmt.Sprintf("you are a trusted user of the host daemon (%s); the gateway still refuses everything that needs trust", h.TrustSource))
	case nixdaemon.TrustNotTrusted:
		out = append(out, fmt.Sprintf("you are not a trusted user of the host daemon (%s)", h.TrustSource))
	default:
		out = append(out, "whether the host daemon trusts you is unknown")
	}
	out = append(out,
		"queries inside: allowed",
		"adding paths inside: allowed as an untrusted client (content-addressed or signed; no repair, no signature bypass)",
		"substitution inside: allowed from the host daemon's own substituters")
	switch {
	case !h.Sandbox.Sandboxed() && !cfg.AllowUnsandboxedBuilds:
		out = append(out, fmt.Sprintf("builds inside: refused (host daemon has %s); opt in with --%s or %s = true, which lets the sandbox run builders on the host without a sandbox", h.sandboxSetting(), OptInFlag, OptInFlag))
	case !h.Sandbox.Sandboxed():
		out = append(out, fmt.Sprintf("builds inside: allowed by --%s, and they run on the host WITHOUT a sandbox (host daemon has %s): as the Nix build user, with the host's file system and network", OptInFlag, h.sandboxSetting()))
	default:
		out = append(out, "builds inside: allowed (the host daemon sandboxes them)")
	}
	switch {
	case !cfg.Network:
		out = append(out, "fixed-output builds inside: refused (they download with the host's network, and the sandbox has none)")
	case cfg.FetchPolicy != nil:
		out = append(out, "fixed-output builds inside: decided by the egress allowlist from the URLs they declare")
	default:
		out = append(out, "fixed-output builds inside: allowed (the sandbox's network is open)")
	}
	out = append(out, "privileged settings and trust-granting operations inside: refused, whatever the host's trust in you")
	return out
}

// sandboxSetting names the host's sandboxing the way a refusal and doctor
// say it: "sandbox = false", or what a probe found out.
func (h HostFacts) sandboxSetting() string {
	switch {
	case h.SandboxProbe == probeUnsandboxed:
		return "sandbox = true but sandbox-fallback = true, and it cannot sandbox here, so it builds unsandboxed"
	case h.Sandbox == SandboxUnknown:
		return "sandbox = unknown"
	}
	return "sandbox = " + string(h.Sandbox)
}
