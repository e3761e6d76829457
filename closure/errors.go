package closure

import (
	"fmt"
	"strings"
)

// NixMissingError: no Nix on PATH.
type NixMissingError struct{ Program string }

func (e *NixMissingError) Error() string {
	return fmt.Sprintf("%s not found: Nix is needed to build a sandbox the first time", e.Program)
}
func (e *NixMissingError) Hint() string {
	return "put Nix on PATH, or " + UpgradeNixHint + "; once built, sandboxes start without Nix"
}

// NoDaemonError: Nix is there but its daemon is not reachable.
type NoDaemonError struct{ Detail string }

func (e *NoDaemonError) Error() string { return "cannot reach the Nix daemon: " + e.Detail }
func (e *NoDaemonError) Hint() string {
	return "start it (systemctl start nix-daemon, or run nix-daemon as root) and make sure you are in the nix-users group"
}

// UnknownPackagesError: --with names that nixpkgs does not have.
type UnknownPackagesError struct {
	Names       []string
	Suggestions map[string][]string
	NotPackages bool // the names exist but are not derivations (e.g. a package set)
}

func (e *UnknownPackagesError) Error() string {
	what := "unknown package"
	if e.NotPackages {
		what = "not a package (an attribute set or value, not a derivation)"
	}
	if len(e.Names) > 1 && !e.NotPackages {
		what = "unknown packages"
	}
	return fmt.Sprintf("%s: %s", what, strings.Join(e.Names, ", "))
}

func (e *UnknownPackagesError) Hint() string {
	var parts []string
	for _, name := range e.Names {
		if s := e.Suggestions[name]; len(s) > 0 {
			parts = append(parts, fmt.Sprintf("%s: did you mean %s?", name, strings.Join(s, ", ")))
		}
	}
	if len(parts) > 0 {
		return strings.Join(parts, "; ")
	}
	if e.NotPackages {
		return "name a package inside it, e.g. python3Packages.numpy"
	}
	return "names are nixpkgs attribute paths; search them at https://search.nixos.org/packages"
}

// BuildError: evaluation or realisation failed for another reason.
type BuildError struct {
	Stage   string // "evaluation" or "build"
	Message string // the last "error:" line Nix printed
	Log     []string
	Expr    string // where the generated expression is, for reproducing by hand
}

func (e *BuildError) Error() string {
	return fmt.Sprintf("sandbox %s failed: %s", e.Stage, e.Message)
}

func (e *BuildError) Hint() string {
	if e.Expr != "" {
		return "rerun with -v for the full Nix log, or reproduce with: nix-build " + e.Expr
	}
	return "rerun with -v for the full Nix log"
}

// NixpkgsError: no nixpkgs could be found or resolved.
type NixpkgsError struct {
	Ref    string
	Detail string
}

func (e *NixpkgsError) Error() string {
	if e.Ref == "" {
		return "no nixpkgs to build from: " + e.Detail
	}
	return fmt.Sprintf("nixpkgs %q: %s", e.Ref, e.Detail)
}
func (e *NixpkgsError) Hint() string {
	return "pass --nixpkgs PATH or a flake reference (e.g. github:NixOS/nixpkgs/nixos-unstable), or set CLAUDE_SANDBOX_NIXPKGS"
}

// ModuleNixpkgsConfigError: a --module sets nixpkgs.config. The container
// and vm systems take their packages from the nixpkgs instance
// claude-sandbox made (eval-config's `pkgs`), and NixOS refuses
// nixpkgs.config beside an instance made outside
// (nixos/modules/misc/nixpkgs.nix: "Your system configures nixpkgs with an
// externally created instance").
type ModuleNixpkgsConfigError struct{}

func (e *ModuleNixpkgsConfigError) Error() string {
	return "a --module sets nixpkgs.config, which NixOS refuses here: the system's packages come from claude-sandbox's nixpkgs, made before the modules are read"
}

func (e *ModuleNixpkgsConfigError) Hint() string {
	return "drop nixpkgs.config from the module; to allow unfree packages, build with NIXPKGS_ALLOW_UNFREE=1 in the environment (nixpkgs reads it when it evaluates)"
}
