package nixgen

import (
	"fmt"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
)

// A Nix identifier as nixpkgs uses them for attribute names. Quoted names
// (`nodePackages."@scope/x"`) are refused rather than escaped: no package a
// user would reasonably ask for needs one, and refusing keeps every name a
// plain identifier that cannot carry Nix syntax.
var identifier = lazyregexp.New(`^[A-Za-z_][A-Za-z0-9_'-]*$`)

const (
	maxNameLength  = 200
	maxPathDepth   = 8
	maxPackages    = 500
	maxIdentLength = 100
)

// InvalidPackageError says why a --with name was refused before Nix ran.
type InvalidPackageError struct {
	Name   string
	Reason string
}

func (e *InvalidPackageError) Error() string {
	return fmt.Sprintf("invalid package name %q: %s", e.Name, e.Reason)
}

func (e *InvalidPackageError) Hint() string {
	return "package names are nixpkgs attribute paths such as python3 or python3Packages.numpy"
}

// ParseAttrPath splits a dotted nixpkgs attribute path into its components,
// refusing anything that is not a plain identifier path.
func ParseAttrPath(name string) ([]string, error) {
	refuse := func(reason string) ([]string, error) {
		return nil, &InvalidPackageError{Name: name, Reason: reason}
	}
	if name == "" {
		return refuse("empty name")
	}
	if len(name) > maxNameLength {
		return refuse(fmt.Sprintf("longer than %d characters", maxNameLength))
	}
	parts := strings.Split(name, ".")
	if len(parts) > maxPathDepth {
		return refuse(fmt.Sprintf("more than %d components", maxPathDepth))
	}
	for _, part := range parts {
		switch {
		case part == "":
			return refuse("empty component (a leading, trailing or doubled dot)")
		case len(part) > maxIdentLength:
			return refuse("component too long")
		case !identifier.MatchString(part):
			return refuse(fmt.Sprintf("%q is not a Nix identifier (letters, digits, _, ' and -, not starting with a digit or -)", part))
		}
	}
	return parts, nil
}
