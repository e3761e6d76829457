package nixgate

import (
	"fmt"
	"slices"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// OptInFlag is the supervisor's flag (and configuration key) that allows
// builds on a host daemon that does not sandbox them.
const OptInFlag = "nix-unsandboxed-builds"

// Rules: the names a decision is logged under and a refusal cites.
const (
	RuleQuery              = "nix-query"
	RuleAdd                = "nix-add-untrusted"
	RuleSubstitute         = "nix-substitute"
	RuleTempRoot           = "nix-gc-roots"
	RuleSettings           = "nix-untrusted-settings"
	RulePrivilegedSetting  = "nix-privileged-setting"
	RuleBuildSandboxed     = "nix-build-sandboxed"
	RuleUnsandboxedBuilds  = OptInFlag
	RuleFixedOutput        = "nix-fixed-output-network"
	RuleBuildUnclassified  = "nix-build-unclassified"
	RuleFallback           = "nix-fallback"
	RuleTrust              = "nix-needs-trust"
	RuleHostMaintenance    = "nix-host-maintenance"
	RuleGC                 = "nix-gc"
	RuleUnknownOp          = "nix-unknown-operation"
	RuleRemovedOp          = "nix-removed-operation"
	RuleRepair             = "nix-repair"
	RuleSignatureBypass    = "nix-signature-bypass"
	RuleInlineDerivation   = "nix-inline-derivation"
	RuleDynamicDerivations = "nix-dynamic-derivations"
)

// opClass is how the policy treats an operation.
type opClass uint8

const (
	classQuery      opClass = iota + 1 // read-only: allowed
	classSubstitute                    // may substitute from the daemon's own caches: allowed
	classAdd                           // adds a path as an untrusted client: allowed without repair or signature bypass
	classRoot                          // temporary or indirect GC root: allowed
	classBuild                         // builds: decided per derivation
	classSettings                      // SetOptions: untrusted settings only
	classGC                            // CollectGarbage: refused
	classTrust                         // needs or grants trust: refused
	classHost                          // whole-store maintenance of the host: refused
	classRemoved                       // removed from Nix: refused
)

// opPolicy is the op table. Each line cites what daemon.cc does with the
// operation; the table in docs/nix-gateway.md says the same for people.
var opPolicy = map[nixdaemon.Op]opClass{
	nixdaemon.OpIsValidPath:                classQuery,
	nixdaemon.OpQueryPathInfo:              classQuery,
	nixdaemon.OpQueryPathHash:              classQuery,
	nixdaemon.OpQueryReferences:            classQuery,
	nixdaemon.OpQueryReferrers:             classQuery,
	nixdaemon.OpQueryValidDerivers:         classQuery,
	nixdaemon.OpQueryDerivationOutputs:     classQuery,
	nixdaemon.OpQueryDerivationOutputNames: classQuery,
	nixdaemon.OpQueryDerivationOutputMap:   classQuery,
	nixdaemon.OpQueryDeriver:               classQuery,
	nixdaemon.OpQueryPathFromHashPart:      classQuery,
	nixdaemon.OpQueryAllValidPaths:         classQuery,
	nixdaemon.OpQueryMissing:               classQuery,
	nixdaemon.OpQueryRealisation:           classQuery,
	nixdaemon.OpNarFromPath:                classQuery, // the store is world-readable
	nixdaemon.OpExportPath:                 classQuery, // a NAR of a valid path, via STDERR_WRITE
	nixdaemon.OpSyncWithGC:                 classQuery, // a no-op in every daemon since 2.0
	// Queries of the daemon's substituters (its own, trusted configuration).
	nixdaemon.OpHasSubstitutes:              classQuery,
	nixdaemon.OpQuerySubstitutablePaths:     classQuery,
	nixdaemon.OpQuerySubstitutablePathInfo:  classQuery,
	nixdaemon.OpQuerySubstitutablePathInfos: classQuery,
	// QueryValidPaths substitutes when its flag (≥ 1.27) says so.
	nixdaemon.OpQueryValidPaths: classSubstitute,
	// EnsurePath: Store::ensurePath makes a substitution goal, never a build.
	nixdaemon.OpEnsurePath: classSubstitute,

	nixdaemon.OpAddToStore:         classAdd, // content-addressed by the daemon from the data
	nixdaemon.OpAddTextToStore:     classAdd,
	nixdaemon.OpAddToStoreNar:      classAdd, // daemon checks signatures unless dontCheckSigs (refused)
	nixdaemon.OpAddMultipleToStore: classAdd,

	nixdaemon.OpAddTempRoot:     classRoot,
	nixdaemon.OpAddIndirectRoot: classRoot,

	nixdaemon.OpBuildPaths:            classBuild,
	nixdaemon.OpBuildPathsWithResults: classBuild,
	nixdaemon.OpSetOptions:            classSettings,
	nixdaemon.OpCollectGarbage:        classGC,

	// BuildDerivation: a trusted client builds an inline, unregistered
	// input-addressed derivation ("you are not privileged to build
	// input-addressed derivations" otherwise).
	nixdaemon.OpBuildDerivation: classTrust,
	// AddSignatures: daemon.cc adds them with no trust check at all.
	nixdaemon.OpAddSignatures: classTrust,
	// ImportPaths: NoCheckSigs for a trusted client.
	nixdaemon.OpImportPaths: classTrust,
	// AddPermRoot, AddBuildLog: trusted clients only in daemon.cc.
	nixdaemon.OpAddPermRoot: classTrust,
	nixdaemon.OpAddBuildLog: classTrust,
	// RegisterDrvOutput: records a realisation (ca-derivations); daemon.cc
	// does not check the client's trust.
	nixdaemon.OpRegisterDrvOutput: classTrust,

	// OptimiseStore rewrites the whole host store; VerifyStore scans it and
	// even without repair invalidates paths that vanished
	// (LocalStore::verifyPath).
	nixdaemon.OpOptimiseStore: classHost,
	nixdaemon.OpVerifyStore:   classHost,
	// FindRoots scans the host's roots, removes stale links and logs each
	// one it removes with its host path, to the client; it lists the root
	// links themselves uncensored when the host trusts this user.
	nixdaemon.OpFindRoots: classHost,

	nixdaemon.OpQueryFailedPaths: classRemoved,
	nixdaemon.OpClearFailedPaths: classRemoved,
}

// untrustedSettings are the SetOptions overrides Nix's daemon applies for
// an untrusted client (ClientSettings::apply in daemon.cc: timeout,
// max-silent-time, build-poll-interval, connect-timeout, builders = "";
// Nix 2.8 also takes repeat), each a limit, not a right; plus the three it
// ignores for every client (ssh-auth-sock, experimental-features,
// plugin-files). substituters, which it also lets an untrusted client
// narrow to trusted-substituters, is refused here: the sandbox's
// substituters are the host's.
var untrustedSettings = map[string]func(value string) bool{
	"timeout":               anyValue,
	"max-silent-time":       anyValue,
	"build-poll-interval":   anyValue,
	"connect-timeout":       anyValue,
	"repeat":                anyValue,
	"builders":              func(v string) bool { return v == "" },
	"ssh-auth-sock":         anyValue,
	"experimental-features": anyValue,
	"plugin-files":          anyValue,
}

func anyValue(string) bool { return true }

// allowedSettingNames lists untrustedSettings for a message.
func allowedSettingNames() string {
	var names []string
	for k := range untrustedSettings {
		switch k {
		case "builders":
			names = append(names, `builders = ""`)
		case "ssh-auth-sock", "experimental-features", "plugin-files":
		default:
			names = append(names, k)
		}
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// decision is one decision before it is logged and answered.
type decision struct {
	refuse bool
	rule   string
	what   string // what was refused, for the message ("building /nix/store/…")
	reason string // why, one clause
	fix    string // how to allow it
	target string // overrides the request's own Describe() in the log
}

func allow(rule string) decision { return decision{rule: rule} }

func refusal(rule, what, reason, fix string) decision {
	return decision{refuse: true, rule: rule, what: what, reason: reason, fix: fix}
}

// message is what the client prints after "error: ".
func (d decision) message() string {
	return fmt.Sprintf("claude-sandbox refused %s: %s (rule %s); %s", d.what, d.reason, d.rule, d.fix)
}

func (d decision) entry(q *nixdaemon.Request) sessionlog.Entry {
	e := sessionlog.Entry{Service: "nix", Decision: sessionlog.Allow, Op: q.Op.String(), Target: q.Describe(), Rule: d.rule}
	if d.target != "" {
		e.Target = d.target
	}
	if d.refuse {
		e.Decision = sessionlog.Refuse
		e.Reason = d.what + ": " + d.reason
		e.Fix = d.fix
	}
	return e
}

const fixOnHost = "this cannot be allowed from inside a sandbox: run it on the host, outside the sandbox"

// decideStatic decides everything that needs no question to the daemon:
// every operation but builds.
func (g *Gateway) decideStatic(q *nixdaemon.Request) decision {
	class, known := opPolicy[q.Op]
	if !known {
		return refusal(RuleUnknownOp, fmt.Sprintf("worker operation %d", uint64(q.Op)),
			"the gateway does not know it, and passes no unknown operation through",
			"use a Nix client whose worker protocol is 1.38 or older, or a claude-sandbox that knows the operation")
	}
	switch class {
	case classQuery:
		return allow(RuleQuery)
	case classSubstitute:
		if q.Op == nixdaemon.OpQueryValidPaths && !q.Substitute {
			return allow(RuleQuery)
		}
		return allow(RuleSubstitute)
	case classRoot:
		return allow(RuleTempRoot)
	case classAdd:
		if q.Repair {
			return refusal(RuleRepair, fmt.Sprintf("%s with repair of %s", q.Op, q.Describe()),
				"repairing rewrites a path that is already valid in the host store, which needs the daemon's trust", fixOnHost)
		}
		if q.DontCheckSigs {
			return refusal(RuleSignatureBypass, fmt.Sprintf("importing %s without checking signatures", q.Describe()),
				"skipping signature checks needs the daemon's trust",
				"sign the paths with a key the host trusts, or import them on the host")
		}
		if q.Info != nil {
			// As daemon.cc does for an untrusted client: a path added from
			// inside is never "built here".
			q.Info.Ultimate = false
		}
		return allow(RuleAdd)
	case classSettings:
		return decideSettings(q.Settings)
	case classGC:
		reason := "deleting paths from the host's store is a change outside the sandbox, and would let a build run that the gateway checked as already built"
		if q.GC.Action == nixdaemon.GCReturnLive || q.GC.Action == nixdaemon.GCReturnDead {
			reason = "even listing scans the host's GC roots and reports their host paths (removing stale links as it goes)"
		}
		return refusal(RuleGC, fmt.Sprintf("garbage collection (%s)", q.GC.Action), reason,
			"run nix-collect-garbage, nix-store --gc or nix-store --delete on the host")
	case classTrust:
		what, reason := trustOp(q)
		return refusal(RuleTrust, what, reason, fixOnHost)
	case classHost:
		return refusal(RuleHostMaintenance, q.Op.String(), hostReason[q.Op], fixOnHost)
	case classRemoved:
		return refusal(RuleRemovedOp, fmt.Sprintf("worker operation %s", q.Op),
			"Nix removed it in 2.0", "use a current Nix client")
	}
	return refusal(RuleUnknownOp, fmt.Sprintf("worker operation %s", q.Op), "no rule covers it", fixOnHost)
}

var hostReason = map[nixdaemon.Op]string{
	nixdaemon.OpOptimiseStore: "it rewrites the whole host store (hard-linking identical files)",
	nixdaemon.OpVerifyStore:   "it scans the whole host store and, even without repair, drops vanished paths from its database",
	nixdaemon.OpFindRoots:     "it scans the host's GC roots and reports their host paths (removing stale links as it goes)",
}

func trustOp(q *nixdaemon.Request) (what, reason string) {
	switch q.Op {
	case nixdaemon.OpBuildDerivation:
		d := q.Derivation
		return fmt.Sprintf("BuildDerivation of the inline derivation %s (builder %s)", q.Path, d.Builder),
			"building a derivation the store has not registered needs the daemon's trust; instantiate it (nix-instantiate) and build the .drv instead"
	case nixdaemon.OpAddSignatures:
		return fmt.Sprintf("adding signatures to %s", q.Path), "signatures decide what the host store trusts"
	case nixdaemon.OpImportPaths:
		return "importing paths (nix-store --import)", "the daemon imports them without signature checks for a trusted user"
	case nixdaemon.OpAddPermRoot:
		return fmt.Sprintf("a permanent GC root for %s", q.Path), "it needs the daemon's trust (the client can make the link itself)"
	case nixdaemon.OpAddBuildLog:
		return fmt.Sprintf("adding a build log for %s", q.Path), "it needs the daemon's trust"
	case nixdaemon.OpRegisterDrvOutput:
		return fmt.Sprintf("registering the realisation %s", q.Path), "a realisation tells the host store which path a derivation output is"
	}
	return q.Op.String(), "it needs the daemon's trust"
}

func decideSettings(s *nixdaemon.Settings) decision {
	var bad []string
	for name, value := range s.Overrides {
		ok, known := untrustedSettings[name]
		if !known || !ok(value) {
			bad = append(bad, name)
		}
	}
	if len(bad) == 0 {
		return allow(RuleSettings)
	}
	slices.Sort(bad)
	quoted := make([]string, len(bad))
	for i, b := range bad {
		quoted[i] = "'" + b + "'"
	}
	what := "the Nix setting " + strings.Join(quoted, ", ")
	d := refusal(RulePrivilegedSetting, what,
		fmt.Sprintf("a sandbox may not change the host daemon's settings beyond what it allows an untrusted user (%s)", allowedSettingNames()),
		"remove it from --option, NIX_CONFIG and the sandbox's nix.conf; set it in the host's nix.conf if the host should use it")
	d.target = strings.Join(bad, " ")
	return d
}
