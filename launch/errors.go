package launch

import (
	"errors"
	"fmt"
)

// The errors a launch reports, shared by every backend: the one place that
// maps errors to exit codes (cmd/claude-sandbox/exitcode.go) knows these
// and no backend package.

// StartError: the sandbox program could not be executed at all.
type StartError struct{ Err error }

func (e *StartError) Error() string { return e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }
func (e *StartError) Hint() string  { return "the closure may be damaged: retry with --rebuild" }

// ExitStatusError carries a sandboxed command's non-zero exit status when
// this process waited for it instead of exec'ing it.
type ExitStatusError struct{ Code int }

func (e *ExitStatusError) Error() string {
	return fmt.Sprintf("the sandboxed command exited with status %d", e.Code)
}

// StatusError is nil for status 0, else an *ExitStatusError.
func StatusError(code int) error {
	if code == 0 {
		return nil
	}
	return &ExitStatusError{Code: code}
}

// NotRunningError: no sandbox runs for the project.
type NotRunningError struct{ Project string }

func (e *NotRunningError) Error() string {
	return fmt.Sprintf("no sandbox is running for %s", e.Project)
}
func (e *NotRunningError) Hint() string {
	return "start one with `claude-sandbox PROJECT`; `claude-sandbox ps` lists the running ones"
}

// EnterError: joining a running sandbox failed at one step.
type EnterError struct {
	Step string
	Err  error
	// Ended: it failed only because the sandbox ended first; a launch
	// that meant to join may start one instead.
	Ended bool
	// CommandMissing: the command is not installed in that sandbox.
	CommandMissing bool
}

func (e *EnterError) Error() string {
	return fmt.Sprintf("entering the running sandbox: %s: %v", e.Step, e.Err)
}
func (e *EnterError) Unwrap() error { return e.Err }
func (e *EnterError) Hint() string {
	if e.CommandMissing {
		return "the command is not installed in that sandbox (add it with --with when starting one)"
	}
	return "the sandbox may have just ended (see claude-sandbox ps); --new starts a separate one"
}

// EndedBeforeJoin says whether a join failed only because the sandbox
// ended before the command could enter it: a new one may be started.
func EndedBeforeJoin(err error) bool {
	var nr *NotRunningError
	var ee *EnterError
	return errors.As(err, &nr) || errors.As(err, &ee) && ee.Ended
}

// EnterBusyError: another `enter` is attached to the sandbox's only
// console for it (a VM's second console).
type EnterBusyError struct{}

func (*EnterBusyError) Error() string { return "another enter session is attached to this VM" }
func (*EnterBusyError) Hint() string {
	return "the VM has one second console; close the other session first"
}

// NotRootError: the backend needs root.
type NotRootError struct {
	Backend string
	Reason  string // why --sudo could not help, when it was asked for
}

func (e *NotRootError) Error() string {
	if e.Reason != "" {
		return e.Reason
	}
	return fmt.Sprintf("the %s backend needs root: systemd-nspawn creates namespaces and mounts only root may", e.Backend)
}
func (e *NotRootError) Hint() string {
	if e.Reason != "" {
		return "run claude-sandbox as root (sudo, su -c, doas …)"
	}
	return "run it with sudo (sudo claude-sandbox --backend " + e.Backend + " …), or add --sudo to re-run it through sudo"
}

// HostError: this host cannot run the backend (a program it needs is
// missing, or this binary cannot run inside).
type HostError struct {
	Backend string
	Reason  string
	Fix     string
}

func (e *HostError) Error() string { return "the " + e.Backend + " backend cannot start: " + e.Reason }
func (e *HostError) Hint() string  { return e.Fix }

// UnsupportedError is a switch the chosen backend cannot honour: a usage
// error, not silence.
type UnsupportedError struct{ Backend, Flag, Advice string }

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("%s: not supported by the %s backend", e.Flag, e.Backend)
}
func (e *UnsupportedError) Hint() string { return e.Advice }

// OptionError is a flag with a value that is not one of its choices.
type OptionError struct{ Flag, Value, Want string }

func (e *OptionError) Error() string {
	return fmt.Sprintf("%s %q: not one of %s", e.Flag, e.Value, e.Want)
}
func (e *OptionError) Hint() string { return fmt.Sprintf("use %s %s", e.Flag, e.Want) }

// NoKVMError: KVM was asked for (or chosen by auto) and does not work here.
type NoKVMError struct {
	Reason string
	Auto   bool // chosen by --accel auto rather than asked for
}

func (e *NoKVMError) Error() string { return "KVM does not work here: " + e.Reason }
func (e *NoKVMError) Hint() string {
	if e.Auto {
		return "--accel auto found /dev/kvm but the guest could not run on it (nested virtualisation often fails like this); pass --accel tcg (emulation: slower, but works everywhere)"
	}
	return "pass --accel tcg (emulation: slower, but works everywhere)"
}

// VMStartError: the VM could not be started, or stopped before the
// command ran.
type VMStartError struct {
	Reason string
	Log    string // where the guest's boot output was kept
	hint   string
}

// NewVMStartError is a VMStartError with its own hint.
func NewVMStartError(reason, hint string) *VMStartError {
	return &VMStartError{Reason: reason, hint: hint}
}

func (e *VMStartError) Error() string { return "the VM could not start: " + e.Reason }
func (e *VMStartError) Hint() string {
	if e.hint != "" {
		return e.hint
	}
	if e.Log != "" {
		return "the guest's boot output is in " + e.Log + "; --dry-run prints QEMU's command line"
	}
	return "--dry-run prints QEMU's command line"
}
