package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
)

// runProgram runs a short program with a deadline and returns its trimmed
// stdout and last stderr line.
func runProgram(ctx context.Context, timeout time.Duration, env []string, name string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = env
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("no answer within %s", timeout)
	}
	return strings.TrimSpace(stdout.String()), lastLine(stderr.String()), err
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(nixdaemon.StripANSI(lines[i])); l != "" {
			return l
		}
	}
	return ""
}

func checkNix(ctx context.Context, env *Env) Check {
	c := Check{ID: "nix", Title: "Nix", NeededBy: backends}
	var missing []string
	for _, p := range []string{"nix-instantiate", "nix-store"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		c.Status, c.Detail = Fail, strings.Join(missing, " and ")+" not on PATH: the first build of a sandbox needs Nix"
		c.Fix = closure.UpgradeNixHint + ", then open a new shell"
		return c
	}
	out, errLine, err := runProgram(ctx, 10*time.Second, nil, "nix-store", "--version")
	if err != nil {
		c.Status, c.Detail = Fail, "nix-store --version failed: "+firstNonEmpty(errLine, err.Error())
		c.Fix = "reinstall Nix"
		return c
	}
	p, _ := exec.LookPath("nix-store")
	c.Status, c.Detail = OK, fmt.Sprintf("%s (%s)", out, p)
	return c
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// daemonReachable dials the daemon as realisation does.
func daemonReachable(ctx context.Context) (*nixdaemon.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return nixdaemon.Dial(ctx, nixdaemon.SocketPath())
}

// rootWithoutDaemon is a single-user install used by root: builds use the
// store directly, as closure does.
func rootWithoutDaemon(env *Env) bool { return env.EUID == 0 && env.Getenv("NIX_REMOTE") == "" }

func checkDaemon(ctx context.Context, env *Env) Check {
	c := Check{ID: "nix-daemon", Title: "Nix daemon"}
	socket := nixdaemon.SocketPath()
	client, err := daemonReachable(ctx)
	if err != nil {
		if rootWithoutDaemon(env) {
			c.Status = Warn
			c.Detail = fmt.Sprintf("not reachable at %s (%v); as root, builds use the store directly, but sandboxes get no Nix daemon inside", socket, rootCause(err))
			c.Fix = "start it: systemctl start nix-daemon (or run nix-daemon as root in the background)"
			return c
		}
		c.Status, c.NeededBy = Fail, backends
		c.Detail = fmt.Sprintf("not reachable at %s: %v", socket, rootCause(err))
		c.Fix = "start it (systemctl start nix-daemon, or nix-daemon as root) and make sure you are in the nix-users group (then log in again)"
		if errors.Is(err, os.ErrPermission) {
			c.Fix = "add yourself to the group that owns the socket's directory (nix-users): sudo usermod -aG nix-users $USER, then log in again"
		}
		return c
	}
	defer client.Close()
	version := client.DaemonNixVersion()
	if version == "" {
		version = "version not sent"
	}
	c.Status = OK
	c.Detail = fmt.Sprintf("Nix %s, protocol %s, at %s", version, client.DaemonProtocolVersion(), socket)
	return c
}

// rootCause drops the wrapping layers of a dial or open error.
func rootCause(err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// probeContent is fixed, so the probe's store path is always the same:
// running doctor again adds nothing new to the store.
const probeContent = "claude-sandbox doctor: this file proves the Nix store was writable.\n"

func checkStore(ctx context.Context, env *Env) Check {
	c := Check{ID: "nix-store", Title: "Nix store", NeededBy: backends}
	if _, err := exec.LookPath("nix-store"); err != nil {
		c.Status, c.Detail, c.Fix = Fail, "not tried: nix-store is not installed", "install Nix"
		return c
	}
	dir, err := os.MkdirTemp("", "claude-sandbox-doctor-")
	if err != nil {
		c.Status, c.Detail = Fail, "cannot create a temporary file: "+err.Error()
		return c
	}
	defer os.RemoveAll(dir)
	probe := filepath.Join(dir, "claude-sandbox-doctor-probe")
	if err := os.WriteFile(probe, []byte(probeContent), 0o644); err != nil {
		c.Status, c.Detail = Fail, "cannot create a temporary file: "+err.Error()
		return c
	}
	via := "directly (no daemon; as root)"
	procEnv := os.Environ()
	if client, err := daemonReachable(ctx); err == nil {
		client.Close()
		procEnv = append(procEnv, "NIX_REMOTE=daemon")
		via = "through the daemon"
	} else if !rootWithoutDaemon(env) {
		c.Status, c.Detail = Fail, "not tried: the Nix daemon is not reachable"
		c.Fix = "see the Nix daemon line"
		return c
	}
	out, errLine, err := runProgram(ctx, 30*time.Second, procEnv, "nix-store", "--add", probe)
	path := lastLine(out)
	if err != nil || !strings.HasPrefix(path, "/nix/store/") {
		c.Status = Fail
		c.Detail = "adding a file " + via + " failed: " + firstNonEmpty(errLine, fmt.Sprint(err))
		c.Fix = "check the daemon's log and that /nix/store's file system is writable and not full"
		return c
	}
	c.Status, c.Detail = OK, fmt.Sprintf("writable %s (added %s)", via, path)
	return c
}

func checkNixpkgs(ctx context.Context, env *Env) Check {
	c := Check{ID: "nixpkgs", Title: "nixpkgs", NeededBy: backends}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	b := &closure.Builder{Dirs: env.Dirs, Log: env.Log}
	np, err := b.ResolveNixpkgs(ctx, env.Nixpkgs, false)
	if err != nil {
		c.Status = Fail
		c.Detail = fmt.Sprintf("%s (from %s) does not resolve: %v", env.Nixpkgs.Ref, env.Nixpkgs.Source, err)
		var h interface{ Hint() string }
		if errors.As(err, &h) {
			c.Fix = h.Hint()
		}
		return c
	}
	detail := fmt.Sprintf("%s (from %s)", np.Path, env.Nixpkgs.Source)
	if np.Path != env.Nixpkgs.Ref {
		detail = fmt.Sprintf("%s → %s (from %s)", env.Nixpkgs.Ref, np.Path, env.Nixpkgs.Source)
	}
	// What a first build would meet first: nixpkgs refusing this Nix.
	var old *closure.NixTooOldError
	if err := b.CheckNixVersion(ctx, np); errors.As(err, &old) {
		c.Status = Fail
		c.Detail = fmt.Sprintf("%s needs Nix %s or newer; nix-instantiate here is %s (%s)", detail, old.Needs, old.Found, old.Program)
		c.Fix = old.Hint()
		return c
	}
	if needs, err := closure.NixpkgsMinimum(np.Path); err == nil && needs != "" {
		detail += ", needs Nix " + needs + " or newer"
	}
	c.Status, c.Detail = OK, detail
	return c
}

// checkNixGateway reports what Nix inside a sandbox may do: how the host
// daemon builds (sandboxed or not), whether it trusts this user, and what
// a sandbox's gateway therefore allows. The supervisor program answers it
// (`claude-sandbox-supervisor probe-nix`), so that this program never links
// the gateway; the answer takes a probe build, seconds.
func checkNixGateway(ctx context.Context, env *Env) Check {
	c := Check{ID: "nix-gateway", Title: "Nix inside"}
	sv, err := launch.FindSupervisor(func(name string) (string, bool) {
		v := env.Getenv(name)
		return v, v != ""
	})
	if err != nil {
		c.Status, c.NeededBy = Fail, backends
		c.Detail = err.Error()
		c.Fix = "install claude-sandbox-supervisor beside claude-sandbox (go build -o DIR/ ./cmd/...)"
		return c
	}
	args := []string{"probe-nix", fmt.Sprintf("--allow-unsandboxed-builds=%t", env.NixUnsandboxedBuilds), fmt.Sprintf("--network=%t", !env.NoNetwork)}
	out, errLine, err := runProgram(ctx, 2*time.Minute, nil, sv, args...)
	var answer struct {
		Sandboxed bool     `json:"sandboxed"`
		Explain   []string `json:"explain"`
		Error     string   `json:"error"`
	}
	if err != nil || json.Unmarshal([]byte(out), &answer) != nil {
		c.Status = Warn
		c.Detail = "could not ask " + sv + ": " + firstNonEmpty(errLine, fmt.Sprint(err))
		return c
	}
	c.Detail = strings.Join(answer.Explain, "; ")
	switch {
	case answer.Error != "":
		c.Status, c.Fix = Warn, "the host daemon could not be asked ("+answer.Error+"); builds inside are refused until it can"
	case answer.Sandboxed || env.NixUnsandboxedBuilds:
		c.Status = OK
	default:
		c.Status = Warn
		c.Fix = "builds inside are refused: turn the host daemon's build sandbox on (sandbox = true in /etc/nix/nix.conf, then restart nix-daemon), or accept unsandboxed builds with --nix-unsandboxed-builds"
	}
	return c
}
