package nixgate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/nar"
)

// Bounds on what classifying one build may cost.
const (
	maxDrvSize       = 16 << 20 // one .drv file
	maxClassifyDrvs  = 1 << 14  // derivations read for one build request
	maxURLsInMessage = 3
)

// drvKind is what a derivation's build would do, as far as the policy
// cares.
type drvKind uint8

const (
	drvInputAddressed drvKind = iota + 1 // or floating content-addressed: no network in a sandbox
	drvFixedOutput                       // outputHash set: the daemon gives it the host's network
	drvImpure                            // __impure: network too
)

type drvInfo struct {
	path string
	kind drvKind
	urls []string
}

// decideBuild decides BuildPaths and BuildPathsWithResults: it asks the
// daemon what the build would actually run (QueryMissing with the very
// targets, on the connection that will build them, so with the client's
// settings in force), then judges each derivation that would be built.
//
// With fallback (the client's --fallback), a path QueryMissing says will be
// substituted is built when its substitution fails, by a derivation the
// gateway cannot see from here: such builds are allowed only where every
// build would be (the host sandboxes or the user opted in, the network is
// open, and no FetchPolicy needs to see URLs).
func (g *Gateway) decideBuild(ctx context.Context, q *nixdaemon.Request, up *nixdaemon.Client, fallback bool) decision {
	if q.Mode == nixdaemon.BuildModeRepair {
		return refusal(RuleRepair, "building in repair mode", "repairing rewrites paths that are already valid in the host store, which needs the daemon's trust", fixOnHost)
	}
	targets := make([]nixdaemon.DerivedPath, 0, len(q.Targets))
	for _, s := range q.Targets {
		p := nixdaemon.ParseDerivedPath(s, q.Version)
		// Only what re-encodes to the very same string is asked about, so
		// the daemon's answer is about what it will be asked to build.
		if enc, err := p.Encode(q.Version); err != nil || enc != s {
			return refusal(RuleDynamicDerivations, fmt.Sprintf("building %s", s),
				"the gateway cannot tell what this target would build (outputs of outputs are dynamic derivations, an experimental feature)",
				"build a plain derivation or store path")
		}
		targets = append(targets, p)
	}
	missing, err := up.QueryMissing(ctx, targets...)
	if err != nil {
		var de *nixdaemon.DaemonError
		if errors.As(err, &de) {
			return refusal(RuleBuildUnclassified, "this build", "the gateway could not find out what it would run: "+nixdaemon.StripANSI(de.Message), "check the paths you asked for")
		}
		return refusal(RuleBuildUnclassified, "this build", "the gateway could not ask the host daemon what it would run: "+err.Error(), "try again")
	}
	willBuild := missing.WillBuild
	if q.Mode == nixdaemon.BuildModeCheck {
		// --check rebuilds the given derivations even though their outputs
		// are valid (QueryMissing does not list those).
		for _, t := range targets {
			if t.Outputs != nil || strings.HasSuffix(t.Path, ".drv") {
				willBuild = append(willBuild, t.Path)
			}
		}
	}
	sandboxed := g.cfg.Host.Sandbox.Sandboxed()
	anyBuildAllowed := (sandboxed || g.cfg.AllowUnsandboxedBuilds) && g.cfg.Network && g.cfg.FetchPolicy == nil
	if fallback && len(missing.WillSubstitute) > 0 && !anyBuildAllowed {
		d := refusal(RuleFallback, "substituting "+listTarget(missing.WillSubstitute)+" with --fallback",
			"if a substitution failed, the host daemon would build the path instead, a build the gateway cannot check first",
			"run it without --fallback (nix: --option fallback false)")
		d.target = listTarget(missing.WillSubstitute)
		return d
	}
	if len(willBuild) == 0 {
		if len(missing.WillSubstitute) > 0 {
			d := allow(RuleSubstitute)
			d.target = listTarget(missing.WillSubstitute)
			return d
		}
		return allow(RuleQuery) // everything is valid already: nothing runs
	}

	if !sandboxed && !g.cfg.AllowUnsandboxedBuilds {
		d := refusal(RuleUnsandboxedBuilds, "building "+listTarget(willBuild),
			fmt.Sprintf("the host's Nix daemon has %s, so the builder would run on the host, outside this sandbox", g.cfg.Host.sandboxSetting()),
			fmt.Sprintf("to allow builds that run unsandboxed on the host, start the sandbox with --%s or set %s = true in the claude-sandbox configuration", OptInFlag, OptInFlag))
		d.target = listTarget(willBuild)
		return d
	}
	rule := RuleBuildSandboxed
	if !sandboxed {
		rule = RuleUnsandboxedBuilds
	}
	if g.cfg.Network && g.cfg.FetchPolicy == nil {
		d := allow(rule)
		d.target = listTarget(willBuild)
		return d // nothing left to tell apart: every kind may build
	}
	if len(willBuild) > maxClassifyDrvs {
		return refusal(RuleBuildUnclassified, "building "+listTarget(willBuild),
			fmt.Sprintf("it would build %d derivations, more than the gateway checks at once (%d)", len(willBuild), maxClassifyDrvs),
			"build it in parts")
	}
	for _, drvPath := range willBuild {
		info, err := readDrv(ctx, up, drvPath)
		if err != nil {
			return refusal(RuleBuildUnclassified, "building "+drvPath, "the gateway could not read the derivation: "+err.Error(), "check that the derivation is valid in the host store")
		}
		if info.kind == drvInputAddressed {
			continue
		}
		what := "building the fixed-output derivation " + drvPath
		if info.kind == drvImpure {
			what = "building the impure derivation " + drvPath
		}
		if len(info.urls) > 0 {
			what += " (fetching " + listURLs(info.urls) + ")"
		}
		if !g.cfg.Network {
			d := refusal(RuleFixedOutput, what,
				"the host daemon gives such builds the host's network, and this sandbox has no network",
				"start the sandbox with the network on, or build it on the host first so it is already valid")
			d.target = drvPath
			return d
		}
		if ok, r := g.cfg.FetchPolicy(drvPath, info.urls); !ok {
			d := refusal(r, what, "the sandbox's network rules do not allow these URLs", "add the hosts to the sandbox's network allowlist")
			d.target = drvPath
			return d
		}
	}
	d := allow(rule)
	d.target = listTarget(willBuild)
	return d
}

// readDrv reads drvPath from the host store through the daemon and
// classifies it.
func readDrv(ctx context.Context, up *nixdaemon.Client, drvPath string) (drvInfo, error) {
	info := drvInfo{path: drvPath}
	if !strings.HasSuffix(drvPath, ".drv") {
		return info, fmt.Errorf("%s is not a derivation", drvPath)
	}
	var buf limitedBuffer
	buf.max = maxDrvSize + 4096 // the NAR framing around the file
	if err := up.NarFromPath(ctx, drvPath, &buf); err != nil {
		return info, err
	}
	if buf.over {
		return info, fmt.Errorf("larger than %d bytes", maxDrvSize)
	}
	text, err := narFile(buf.Bytes())
	if err != nil {
		return info, err
	}
	drv, err := derivation.ReadDerivation(bytes.NewReader(text))
	if err != nil {
		return info, fmt.Errorf("parsing %s: %w", path.Base(drvPath), err)
	}
	info.kind, info.urls = classify(drv)
	return info, nil
}

// classify tells a fixed-output or impure derivation from one that builds
// without network, and collects the URLs it declares: fetchurl's `urls`
// (space-separated), `url` (builtin:fetchurl, fetchgit…), or the same
// keys in __json with structured attributes.
func classify(drv *derivation.Derivation) (drvKind, []string) {
	kind := drvInputAddressed
	for _, o := range drv.Outputs {
		switch {
		case o.Hash == "impure":
			kind = drvImpure
		case o.HashAlgorithm != "" && o.Hash != "" && kind != drvImpure:
			kind = drvFixedOutput
		}
	}
	env := drv.Env
	if env["__impure"] == "1" {
		kind = drvImpure
	}
	var urls []string
	urls = append(urls, strings.Fields(env["urls"])...)
	urls = append(urls, strings.Fields(env["url"])...)
	if js, ok := env["__json"]; ok {
		var attrs struct {
			URLs   []string `json:"urls"`
			URL    any      `json:"url"`
			Impure bool     `json:"__impure"`
		}
		if json.Unmarshal([]byte(js), &attrs) == nil {
			urls = append(urls, attrs.URLs...)
			if s, ok := attrs.URL.(string); ok && s != "" {
				urls = append(urls, s)
			}
			if attrs.Impure {
				kind = drvImpure
			}
		}
	}
	return kind, urls
}

// narFile returns the contents of a NAR holding one regular file.
func narFile(b []byte) ([]byte, error) {
	nr, err := nar.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	defer nr.Close()
	hdr, err := nr.Next()
	if err != nil {
		return nil, err
	}
	if hdr.Type != nar.TypeRegular {
		return nil, fmt.Errorf("not a regular file (%s)", hdr.Type)
	}
	return io.ReadAll(nr)
}

// limitedBuffer keeps at most max bytes and remembers whether more came;
// it never fails a write, so the stream it is fed from stays in step.
type limitedBuffer struct {
	bytes.Buffer
	max  int
	over bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); len(p) > room {
		b.over = true
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return b.Buffer.Write(p)
}

func listTarget(paths []string) string {
	switch len(paths) {
	case 0:
		return ""
	case 1:
		return paths[0]
	}
	return fmt.Sprintf("%s (and %d more)", paths[0], len(paths)-1)
}

func listURLs(urls []string) string {
	if len(urls) <= maxURLsInMessage {
		return strings.Join(urls, ", ")
	}
	return strings.Join(urls[:maxURLsInMessage], ", ") + fmt.Sprintf(" and %d more", len(urls)-maxURLsInMessage)
}
