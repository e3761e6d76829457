package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/manifest"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
)

// Prebuilt closures come from a Nix build of this project: the flake's
// backend packages and the NixOS module realise the sandbox closures when
// they are built and hand them to the binary with --prebuilt FILE (their
// wrapper scripts pass it). The default configuration of a backend then
// launches with no evaluation at all, and the NixOS module can carry what
// --with cannot spell: package values and NixOS module values (the
// module's extraPackages and extraModules options).

// prebuiltSchema is the version of the file nix/sandboxes.nix writes.
const prebuiltSchema = 1

type prebuiltFile struct {
	Schema   int               `json:"schema"`
	Closures []prebuiltClosure `json:"closures"`
}

type prebuiltClosure struct {
	Backend string `json:"backend"`
	// Network is set only where the network is built into the closure (vm);
	// elsewhere it is a launch-time switch and null here, as in nixgen.Canonical.
	Network *bool  `json:"network"`
	Path    string `json:"path"`
}

const maxPrebuiltSize = 64 << 10

// ensureClosure is Builder.Ensure, except that a matching prebuilt closure
// is used as it is.
func (a *app) ensureClosure(ctx context.Context, b *closure.Builder, req closure.Request) (*closure.Closure, error) {
	defer a.closeProgress()
	c, err := a.prebuiltFor(req)
	if err != nil || c != nil {
		return c, err
	}
	return b.Ensure(ctx, req)
}

// prebuiltFor returns the prebuilt closure serving req, or nil when req asks
// for anything but a backend's default configuration: extra packages or
// modules, another nixpkgs than the one the package was built with, or a
// rebuild. Those build as usual.
func (a *app) prebuiltFor(req closure.Request) (*closure.Closure, error) {
	if a.opts.Prebuilt == "" || req.Rebuild || a.opts.Nixpkgs != "" || a.getenv("CLAUDE_SANDBOX_NIXPKGS") != "" ||
		len(req.Options.Packages) > 0 || len(req.Options.Modules) > 0 {
		return nil, nil
	}
	file, err := readPrebuilt(a.opts.Prebuilt)
	if err != nil {
		return nil, err
	}
	if p := file.match(req.Options); p != nil {
		m, err := manifest.Load(p.Path)
		if err != nil {
			// Only a damaged store gets here (the wrapper keeps the closure
			// alive); building it again is the way out.
			a.log.Info().Err(err).Str("out", p.Path).Msg("prebuilt closure unusable, building")
			return nil, nil
		}
		if m.Backend != p.Backend {
			return nil, prebuiltError(a.opts.Prebuilt, fmt.Sprintf("%s is a %s closure, listed as %s", p.Path, m.Backend, p.Backend))
		}
		sum := sha256.Sum256([]byte("prebuilt\x00" + p.Path))
		a.log.Debug().Str("out", p.Path).Msg("using the prebuilt closure")
		return &closure.Closure{Key: hex.EncodeToString(sum[:]), OutPath: p.Path, Cached: true, Manifest: m}, nil
	}
	return nil, nil
}

// match finds the closure built for a backend's default configuration.
func (f *prebuiltFile) match(opts nixgen.Canonical) *prebuiltClosure {
	if len(opts.Packages) > 0 || len(opts.Modules) > 0 {
		return nil
	}
	for i, p := range f.Closures {
		if p.Backend == opts.Backend && sameNetwork(p.Network, opts.Network) {
			return &f.Closures[i]
		}
	}
	return nil
}

func sameNetwork(a, b *bool) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func readPrebuilt(path string) (*prebuiltFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, prebuiltError(path, err.Error())
	}
	defer f.Close()
	var file prebuiltFile
	if err := json.NewDecoder(io.LimitReader(f, maxPrebuiltSize)).Decode(&file); err != nil {
		return nil, prebuiltError(path, "not a prebuilt closure list: "+err.Error())
	}
	if file.Schema != prebuiltSchema {
		return nil, prebuiltError(path, fmt.Sprintf("schema %d, this claude-sandbox reads schema %d", file.Schema, prebuiltSchema))
	}
	for _, p := range file.Closures {
		if !strings.HasPrefix(p.Path, manifest.StoreDir+"/") {
			return nil, prebuiltError(path, fmt.Sprintf("%q is not a store path", p.Path))
		}
	}
	return &file, nil
}

func prebuiltError(path, detail string) error {
	return &usageError{
		msg:  fmt.Sprintf("--prebuilt %s: %s", path, detail),
		hint: "this file comes with the claude-sandbox Nix package or NixOS module; reinstall it, or run the plain claude-sandbox binary",
	}
}
