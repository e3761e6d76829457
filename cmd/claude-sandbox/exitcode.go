package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/config"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
	"github.com/claude-sandbox/claude-sandbox/secrets"
)

// Exit codes, one per kind of failure a user can act on. Once the sandbox
// starts, its own exit status is passed through unchanged instead.
const (
	exitOK             = 0
	exitFailure        = 1
	exitUsage          = 64
	exitInvalidPackage = 65
	exitProject        = 66
	exitUnknownPackage = 67
	exitNixpkgs        = 68
	exitNixMissing     = 69
	exitBuild          = 70
	exitUserNamespaces = 72
	exitSandboxStart   = 73
	exitNoDaemon       = 74
	exitNotRunning     = 75 // enter/stop: no sandbox runs for the project
	exitNixTooOld      = 76 // the Nix here is older than the chosen nixpkgs supports
	exitNotRoot        = 77 // a backend that needs root, without it (EX_NOPERM)
	exitNoKVM          = 78 // KVM asked for (or chosen by auto) does not work
	exitUntrusted      = 79 // a project configuration file widens access and is not trusted
	exitConfig         = 80 // a configuration file cannot be read or has a bad setting
	exitSupervisor     = 81 // claude-sandbox-supervisor is not installed beside claude-sandbox
	exitInterrupted    = 130
)

type usageError struct{ msg, hint string }

func (e *usageError) Error() string { return e.msg }
func (e *usageError) Hint() string  { return e.hint }

// exitCode is the one place errors become exit codes.
func exitCode(err error) int {
	var (
		invalid   *nixgen.InvalidPackageError
		backend   *nixgen.UnknownBackendError
		unknown   *closure.UnknownPackagesError
		nixpkgs   *closure.NixpkgsError
		missing   *closure.NixMissingError
		tooOld    *closure.NixTooOldError
		daemon    *closure.NoDaemonError
		build     *closure.BuildError
		pkgsCfg   *closure.ModuleNixpkgsConfigError
		project   *launch.ProjectError
		userns    *launch.UserNamespaceError
		envName   *launch.EnvNameError
		usage     *usageError
		sandboxUp *launch.StartError
		status    *launch.ExitStatusError
		module    *nixgen.ModuleError
		notRoot   *launch.NotRootError
		host      *launch.HostError
		noKVM     *launch.NoKVMError
		vmStart   *launch.VMStartError
		option    *launch.OptionError
		unsupport *launch.UnsupportedError
		enterBusy *launch.EnterBusyError
		notRun    *launch.NotRunningError
		enterErr  *launch.EnterError
		untrusted *config.UntrustedError
		cfgFile   *config.FileError
		unprot    *launch.UnprotectError
		protErr   *launch.ProtectionError
		netMode   *launch.NetworkModeError
		loginMode *launch.ClaudeLoginError
		secretCfg *secrets.ConfigError
		rule      *launch.RuleError
		noSuper   *launch.SupervisorMissingError
		pushURL   *closure.PushURLError
	)
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &status):
		return status.Code
	case errors.As(err, &rule):
		if strings.HasPrefix(rule.Source, "--") {
			return exitUsage
		}
		return exitConfig
	case errors.As(err, &noSuper):
		return exitSupervisor
	case errors.As(err, &usage), errors.As(err, &pushURL), errors.As(err, &backend), errors.As(err, &envName), errors.As(err, &module), errors.As(err, &unsupport), errors.As(err, &netMode), errors.As(err, &unprot),
		errors.As(err, &loginMode):
		return exitUsage
	case errors.As(err, &invalid):
		return exitInvalidPackage
	case errors.As(err, &project), errors.As(err, &protErr):
		return exitProject
	case errors.As(err, &unknown):
		return exitUnknownPackage
	case errors.As(err, &nixpkgs):
		return exitNixpkgs
	case errors.As(err, &missing):
		return exitNixMissing
	case errors.As(err, &tooOld):
		return exitNixTooOld
	case errors.As(err, &daemon):
		return exitNoDaemon
	case errors.As(err, &build), errors.As(err, &pkgsCfg):
		return exitBuild
	case errors.As(err, &userns):
		return exitUserNamespaces
	case errors.As(err, &untrusted):
		return exitUntrusted
	case errors.As(err, &cfgFile), errors.As(err, &secretCfg):
		return exitConfig
	case errors.As(err, &notRoot):
		return exitNotRoot
	case errors.As(err, &noKVM):
		return exitNoKVM
	case errors.As(err, &option):
		return exitUsage
	case errors.As(err, &vmStart), errors.As(err, &enterBusy):
		return exitSandboxStart
	case errors.As(err, &notRun):
		return exitNotRunning
	case errors.As(err, &enterErr):
		return exitSandboxStart
	case errors.As(err, &sandboxUp), errors.As(err, &host):
		return exitSandboxStart
	case errors.Is(err, context.Canceled):
		return exitInterrupted
	}
	return exitFailure
}

// printError writes the error on one line and, where there is one, a hint.
func printError(w io.Writer, err error) {
	var build *closure.BuildError
	if errors.As(err, &build) && len(build.Log) > 0 {
		fmt.Fprintln(w, "last lines of the failing build's log:")
		for _, line := range build.Log {
			fmt.Fprintf(w, "  > %s\n", line)
		}
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	fmt.Fprintf(w, "claude-sandbox: %s\n", msg)
	var h interface{ Hint() string }
	if errors.As(err, &h) && h.Hint() != "" {
		fmt.Fprintf(w, "  hint: %s\n", h.Hint())
	}
}
