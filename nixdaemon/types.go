package nixdaemon

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"
)

// DerivedPath names something to realise: a store path that must exist
// (Outputs nil), or outputs of a derivation (Path is the .drv).
type DerivedPath struct {
	Path string
	// Outputs to build; nil means the path itself (opaque), AllOutputs
	// (["*"]) means every output of the derivation.
	Outputs []string
}

// AllOutputs is the Outputs value meaning every output.
var AllOutputs = []string{"*"}

// OpaquePath is a DerivedPath for an existing (or substitutable) store path.
func OpaquePath(path string) DerivedPath { return DerivedPath{Path: path} }

// DerivationOutputs is a DerivedPath for outputs of drv; with no outputs
// named, all of them.
func DerivationOutputs(drv string, outputs ...string) DerivedPath {
	if len(outputs) == 0 {
		outputs = []string{"*"} // a copy of AllOutputs, safe to append to
	}
	return DerivedPath{Path: drv, Outputs: outputs}
}

// String is the form current daemons take (≥ 1.30, DerivedPath's
// to_string_legacy): "path", "drv!out1,out2" or "drv!*".
func (p DerivedPath) String() string {
	if p.Outputs == nil {
		return p.Path
	}
	return p.Path + "!" + strings.Join(p.Outputs, ",")
}

func (p DerivedPath) allOutputs() bool {
	return len(p.Outputs) == 1 && p.Outputs[0] == "*"
}

// encode renders p for protocol v: from 1.30 a DerivedPath string; before,
// a StorePathWithOutputs string, where a bare .drv means all its outputs
// and a derivation file itself cannot be requested.
func (p DerivedPath) encode(v ProtocolVersion) (string, error) {
	if p.Path == "" || strings.ContainsAny(p.Path, "!\x00") {
		return "", fmt.Errorf("nixdaemon: invalid store path %q", p.Path)
	}
	if p.Outputs != nil {
		if len(p.Outputs) == 0 {
			return "", fmt.Errorf("nixdaemon: %s: empty output list (use AllOutputs)", p.Path)
		}
		for _, o := range p.Outputs {
			if o == "" || strings.ContainsAny(o, "!,\x00") || (o == "*" && len(p.Outputs) > 1) {
				return "", fmt.Errorf("nixdaemon: %s: invalid output name %q", p.Path, o)
			}
		}
	}
	if v.Minor() >= verDerivedPath {
		return p.String(), nil
	}
	switch {
	case p.Outputs == nil && strings.HasSuffix(p.Path, ".drv"):
		return "", fmt.Errorf("nixdaemon: cannot request derivation file %s itself: daemon protocol %s is older than 1.30", p.Path, v)
	case p.Outputs == nil, p.allOutputs():
		return p.Path, nil
	}
	return p.String(), nil
}

// parseDerivedPath is the inverse of encode for what the daemon echoes.
func parseDerivedPath(s string, v ProtocolVersion) DerivedPath {
	path, outs, ok := strings.Cut(s, "!")
	if !ok {
		if v.Minor() < verDerivedPath && strings.HasSuffix(s, ".drv") {
			return DerivationOutputs(s)
		}
		return OpaquePath(s)
	}
	return DerivedPath{Path: path, Outputs: strings.Split(outs, ",")}
}

func encodeDerivedPaths(paths []DerivedPath, v ProtocolVersion) ([]string, error) {
	if len(paths) == 0 {
		return nil, errors.New("nixdaemon: no paths given")
	}
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		s, err := p.encode(v)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// PathInfo is what the daemon knows about a valid store path.
type PathInfo struct {
	Path             string
	Deriver          string    // "" when unknown
	NarHash          string    // "sha256:<nixbase32>", as in narinfo files
	References       []string  // store paths, possibly including Path itself
	RegistrationTime time.Time // when the path became valid
	NarSize          uint64
	Ultimate         bool     // built locally rather than copied or substituted
	Sigs             []string // "keyname:base64"
	CA               string   // content address, "" for input-addressed paths
}

// Missing is the answer to QueryMissing: what realising some paths would do.
type Missing struct {
	WillBuild      []string // derivations that would be built
	WillSubstitute []string // paths that would be substituted
	Unknown        []string // paths that can be neither built nor substituted
	DownloadSize   uint64   // compressed bytes to download
	NarSize        uint64   // unpacked bytes of what would be substituted
}

// BuildResult is the outcome for one DerivedPath of BuildPathsWithResults.
type BuildResult struct {
	Path               DerivedPath
	Status             BuildStatus
	ErrorMsg           string // set on failure
	TimesBuilt         uint64 // from 1.29
	IsNonDeterministic bool   // from 1.29
	StartTime          time.Time
	StopTime           time.Time
	CPUUser            *time.Duration // from 1.37, when the daemon measured it
	CPUSystem          *time.Duration
	// BuiltOutputs maps output names to their store paths (from 1.28).
	BuiltOutputs map[string]string
}

// Err returns nil for a successful result and an error naming the path,
// status and message otherwise.
func (r BuildResult) Err() error {
	if r.Status.Success() {
		return nil
	}
	msg := strings.TrimSpace(StripANSI(r.ErrorMsg))
	if msg == "" {
		return fmt.Errorf("nixdaemon: building %s: %s", r.Path, r.Status)
	}
	return fmt.Errorf("nixdaemon: building %s: %s: %s", r.Path, r.Status, msg)
}

// Settings are the client settings of SetOptions. The daemon applies them
// to this connection only; overrides of restricted settings are ignored
// (with a warning event) unless the daemon trusts the client.
type Settings struct {
	KeepFailed     bool
	KeepGoing      bool
	TryFallback    bool
	Verbosity      Verbosity // which log messages the daemon sends at all
	MaxBuildJobs   uint64    // max-jobs
	MaxSilentTime  time.Duration
	VerboseBuild   bool   // send build output as log lines too
	BuildCores     uint64 // cores; 0 means all
	UseSubstitutes bool
	// Overrides are nix.conf settings by name (sent from 1.12).
	Overrides map[string]string
}

// DefaultSettings are what a plain `nix-build` sends, except that max-jobs
// is the number of CPUs (Nix's "auto") rather than the client's nix.conf.
func DefaultSettings() Settings {
	return Settings{
		Verbosity:      VerbosityInfo,
		MaxBuildJobs:   uint64(runtime.NumCPU()),
		VerboseBuild:   true,
		UseSubstitutes: true,
	}
}

// ParseDerivedPath reads a target as a client of version v sends it
// (BuildPaths, QueryMissing): from 1.30 "path", "drv!out1,out2" or "drv!*";
// before, a StorePathWithOutputs string, where a bare .drv means all its
// outputs. It does not validate; Encode does.
func ParseDerivedPath(s string, v ProtocolVersion) DerivedPath { return parseDerivedPath(s, v) }

// Encode renders p as a client of version v sends it, or fails for a path
// that version cannot express (see DerivedPath.String for the forms).
func (p DerivedPath) Encode(v ProtocolVersion) (string, error) { return p.encode(v) }
