package nixdaemon

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// The server side of every operation: what a client sends after the op
// code, read exactly as daemon.cc's performOp reads it (Nix 2.3 to 2.26,
// protocol 1.21 to 1.38; the version checks below are the ones performOp
// and the WorkerProto serialisers make). Parsing a request completely
// before anything of it reaches the daemon is what lets a gateway decide
// on it, and forward exactly the bytes it decided on.

// Bounds on what a client may make us hold.
const (
	maxTextLen      = 32 << 20 // AddTextToStore contents (a .drv, builtins.toFile)
	maxSettingLen   = 1 << 20  // one SetOptions override name or value
	maxSettings     = 1 << 12  // overrides in one SetOptions
	maxDrvOutputs   = 1 << 10  // outputs of one BuildDerivation
	maxDrvEnvLen    = 16 << 20 // one env value of BuildDerivation
	maxRealisation  = 1 << 20  // one realisation (JSON) or DrvOutput id
	maxCAMethod     = 1 << 10  // "fixed:r:sha256", "text:sha256", …
	maxReplyPaths   = 1 << 24  // paths in one reply (QueryAllValidPaths of a big store)
	maxRootLinkLen  = 64 << 10 // a GC root's link path
	maxBuildResults = 1 << 20
)

// bodyKind says what follows a request's fixed part on the wire.
type bodyKind uint8

const (
	bodyNone   bodyKind = iota
	bodyFramed          // FramedSink frames up to a zero-length one (daemon.cc: FramedSource)
	bodyNAR             // an unframed NAR (AddToStore before 1.25)
)

// Request is one client request, parsed. Which fields are set depends on
// Op; each is named after what daemon.cc reads.
type Request struct {
	Op      Op
	Version ProtocolVersion

	// Path is the single store path (or other single argument) the
	// operation is about: IsValidPath, QueryPathInfo, QueryReferences…,
	// EnsurePath, AddTempRoot, AddIndirectRoot (the link), AddPermRoot,
	// NarFromPath, ExportPath, AddSignatures, AddToStoreNar, AddBuildLog,
	// BuildDerivation (the .drv), QueryPathFromHashPart (the hash part),
	// QueryRealisation and RegisterDrvOutput (the output id).
	Path string
	// Paths: the path set of QueryValidPaths, QuerySubstitutablePaths,
	// QuerySubstitutablePathInfos and CollectGarbage; the references of
	// AddToStore, AddTextToStore and AddToStoreNar.
	Paths []string
	// Targets of BuildPaths, BuildPathsWithResults and QueryMissing, as
	// sent (DerivedPath strings of the negotiated version).
	Targets []string

	Mode          BuildMode // BuildPaths (≥ 1.15), BuildPathsWithResults, BuildDerivation
	Repair        bool      // AddToStore (≥ 1.25), AddMultipleToStore, AddToStoreNar, VerifyStore
	DontCheckSigs bool      // AddMultipleToStore, AddToStoreNar
	Substitute    bool      // QueryValidPaths (≥ 1.27)
	CheckContents bool      // VerifyStore

	Name     string    // AddToStore: the name; AddTextToStore: the suffix
	Method   string    // AddToStore: content-address method and hash ("nar:sha256"; before 1.25 rendered from fixed/recursive/algo)
	Settings *Settings // SetOptions
	GC       *GCRequest
	Info     *PathInfo // AddToStoreNar; Ultimate may be cleared before forwarding
	Sigs     []string  // AddSignatures
	// Derivation is BuildDerivation's inline derivation: only what a
	// refusal names.
	Derivation *InlineDerivation

	body   bodyKind
	raw    []byte // the request as received, op code included
	narRaw string // AddToStoreNar: narHash as sent, re-encoded verbatim
}

// GCRequest is CollectGarbage's options.
type GCRequest struct {
	Action         GCAction
	Paths          []string
	IgnoreLiveness bool
	MaxFreed       uint64
}

// InlineDerivation is the part of BuildDerivation's BasicDerivation a
// decision or a message needs.
type InlineDerivation struct {
	Platform string
	Builder  string
	Outputs  []string
}

// Streams reports whether the request has a body that follows its fixed
// part (frames or a NAR).
func (q *Request) Streams() bool { return q.body != bodyNone }

func (q *Request) minor() int { return q.Version.Minor() }

// readRequest reads the request for op (its code already read) from r, at
// version v. An unknown op is an error: its length cannot be known.
func readRequest(r *reader, op Op, v ProtocolVersion) (*Request, error) {
	q := &Request{Op: op, Version: v}
	var err error
	path := func() { q.Path, err = r.string("store path", maxPathLen) }
	paths := func(what string) { q.Paths, err = r.strings(what, maxListLen, maxPathLen) }

	switch op {
	case OpIsValidPath, OpHasSubstitutes, OpQueryPathHash, OpQueryReferences,
		OpQueryReferrers, OpQueryValidDerivers, OpQueryDerivationOutputs,
		OpQueryDerivationOutputNames, OpQueryDerivationOutputMap, OpQueryDeriver,
		OpQueryPathFromHashPart, OpEnsurePath, OpAddTempRoot, OpQuerySubstitutablePathInfo,
		OpQueryPathInfo, OpNarFromPath:
		path()

	case OpAddIndirectRoot:
		q.Path, err = r.string("root link", maxRootLinkLen)

	case OpQueryRealisation:
		q.Path, err = r.string("output id", maxRealisation)

	case OpQueryValidPaths:
		paths("paths")
		if err == nil && q.minor() >= 27 {
			q.Substitute, err = r.numBool("substitute")
		}

	case OpQuerySubstitutablePaths:
		paths("paths")

	case OpQuerySubstitutablePathInfos:
		if q.minor() < 22 {
			paths("paths")
			break
		}
		// StorePathCAMap: path → optional content address ("" for none).
		var m map[string]string
		m, err = r.stringMap("paths", maxListLen, maxPathLen)
		q.Paths = sortedCopy(slices.Collect(maps.Keys(m)))

	case OpQueryAllValidPaths, OpSyncWithGC, OpFindRoots, OpOptimiseStore, OpImportPaths,
		OpQueryFailedPaths, OpClearFailedPaths:
		// Nothing follows. (ImportPaths' data is pulled with STDERR_READ;
		// the two removed operations are refused by every daemon ≥ 2.0
		// before it reads anything.)

	case OpAddToStore:
		err = readAddToStore(r, q)

	case OpAddTextToStore:
		if q.Name, err = r.string("name", maxPathLen); err != nil {
			break
		}
		if err = r.skipCharged("text", maxTextLen); err != nil {
			break
		}
		paths("references")

	case OpAddMultipleToStore:
		if q.Repair, err = r.numBool("repair"); err != nil {
			break
		}
		q.DontCheckSigs, err = r.numBool("dontCheckSigs")
		q.body = bodyFramed

	case OpAddToStoreNar:
		err = readAddToStoreNar(r, q)

	case OpExportPath:
		path()
		if err == nil {
			_, err = r.uint64("obsolete sign flag")
		}

	case OpBuildPaths, OpBuildPathsWithResults:
		if q.Targets, err = r.strings("targets", maxListLen, maxDerivedPathLen); err != nil {
			break
		}
		if op == OpBuildPathsWithResults || q.minor() >= verBuildMode {
			q.Mode, err = readBuildMode(r)
		}

	case OpQueryMissing:
		q.Targets, err = r.strings("targets", maxListLen, maxDerivedPathLen)

	case OpBuildDerivation:
		err = readBuildDerivation(r, q)

	case OpAddPermRoot:
		path()
		if err == nil {
			_, err = r.string("root link", maxRootLinkLen)
		}

	case OpCollectGarbage:
		gc := &GCRequest{}
		q.GC = gc
		var action uint64
		if action, err = r.uint64("action"); err != nil {
			break
		}
		gc.Action = GCAction(action)
		if gc.Paths, err = r.strings("paths", maxListLen, maxPathLen); err != nil {
			break
		}
		q.Paths = gc.Paths
		if gc.IgnoreLiveness, err = r.numBool("ignoreLiveness"); err != nil {
			break
		}
		if gc.MaxFreed, err = r.uint64("maxFreed"); err != nil {
			break
		}
		for range 3 {
			if _, err = r.uint64("obsolete field"); err != nil {
				break
			}
		}

	case OpSetOptions:
		q.Settings, err = readSettings(r, v)

	case OpVerifyStore:
		if q.CheckContents, err = r.numBool("checkContents"); err != nil {
			break
		}
		q.Repair, err = r.numBool("repair")

	case OpAddSignatures:
		path()
		if err == nil {
			q.Sigs, err = r.strings("signatures", maxListLen, maxSigLen)
		}

	case OpRegisterDrvOutput:
		if q.minor() < 31 {
			if q.Path, err = r.string("output id", maxRealisation); err == nil {
				_, err = r.string("output path", maxPathLen)
			}
			break
		}
		q.Path, err = r.string("realisation", maxRealisation)

	case OpAddBuildLog:
		path()
		q.body = bodyFramed

	default:
		return nil, protoErr(r.op, "unknown operation %d", uint64(op))
	}
	if err != nil {
		return nil, err
	}
	return q, nil
}

// numBool reads a flag the way daemon.cc does (readInt / operator>> bool:
// any non-zero number is true). Stricter than that would refuse requests
// the daemon takes; looser cannot be.
func (r *reader) numBool(what string) (bool, error) {
	n, err := r.uint64(what)
	return n != 0, err
}

// skipCharged consumes a string of at most max bytes without holding it as
// a string (it may still be captured), charging it to the budget.
func (r *reader) skipCharged(what string, max uint64) error {
	hdr, err := r.br.Peek(wordSize)
	if err != nil {
		return r.fail(what, err)
	}
	n := uint64(hdr[0]) | uint64(hdr[1])<<8 | uint64(hdr[2])<<16 | uint64(hdr[3])<<24 |
		uint64(hdr[4])<<32 | uint64(hdr[5])<<40 | uint64(hdr[6])<<48 | uint64(hdr[7])<<56
	if n > max {
		return protoErr(r.op, "%s: length %d exceeds maximum %d", what, n, max)
	}
	if n+wordSize > uint64(r.budget) {
		return protoErr(r.op, "%s: message exceeds %d bytes", what, frameBudget)
	}
	r.budget -= int64(n) + wordSize
	_, err = r.skipString(what, max)
	return err
}

func readBuildMode(r *reader) (BuildMode, error) {
	m, err := r.uint64("build mode")
	if err != nil {
		return 0, err
	}
	if m > uint64(BuildModeCheck) {
		// Serialise<BuildMode>::read throws "Invalid build mode".
		return 0, protoErr(r.op, "invalid build mode %d", m)
	}
	return BuildMode(m), nil
}

func readAddToStore(r *reader, q *Request) error {
	var err error
	if q.minor() >= 25 {
		if q.Name, err = r.string("name", maxPathLen); err != nil {
			return err
		}
		if q.Method, err = r.string("content-address method", maxCAMethod); err != nil {
			return err
		}
		if q.Paths, err = r.strings("references", maxListLen, maxPathLen); err != nil {
			return err
		}
		if q.Repair, err = r.numBool("repair"); err != nil {
			return err
		}
		q.body = bodyFramed
		return nil
	}
	// Before 1.25: baseName, fixed (obsolete), recursive, hash algorithm,
	// then the NAR.
	if q.Name, err = r.string("name", maxPathLen); err != nil {
		return err
	}
	fixed, err := r.numBool("fixed")
	if err != nil {
		return err
	}
	recursive, err := r.uint64("recursive")
	if err != nil {
		return err
	}
	if recursive > 1 {
		return protoErr(r.op, "unsupported file ingestion method %d", recursive)
	}
	algo, err := r.string("hash algorithm", maxCAMethod)
	if err != nil {
		return err
	}
	switch {
	case !fixed:
		q.Method = "nar:sha256" // daemon.cc's compatibility hack
	case recursive == 1:
		q.Method = "nar:" + algo
	default:
		q.Method = "flat:" + algo
	}
	q.body = bodyNAR
	return nil
}

func readAddToStoreNar(r *reader, q *Request) error {
	info := &PathInfo{}
	q.Info = info
	var err error
	if info.Path, err = r.string("store path", maxPathLen); err != nil {
		return err
	}
	q.Path = info.Path
	if info.Deriver, err = r.string("deriver", maxPathLen); err != nil {
		return err
	}
	if q.narRaw, err = r.string("narHash", maxHashLen); err != nil {
		return err
	}
	info.NarHash = q.narRaw
	if info.References, err = r.strings("references", maxListLen, maxPathLen); err != nil {
		return err
	}
	q.Paths = info.References
	if _, err = r.uint64("registrationTime"); err != nil {
		return err
	}
	if info.NarSize, err = r.uint64("narSize"); err != nil {
		return err
	}
	if info.Ultimate, err = r.numBool("ultimate"); err != nil {
		return err
	}
	if info.Sigs, err = r.strings("sigs", maxListLen, maxSigLen); err != nil {
		return err
	}
	if info.CA, err = r.string("ca", maxHashLen); err != nil {
		return err
	}
	if q.Repair, err = r.numBool("repair"); err != nil {
		return err
	}
	if q.DontCheckSigs, err = r.numBool("dontCheckSigs"); err != nil {
		return err
	}
	if q.minor() >= 23 {
		q.body = bodyFramed
	}
	// 1.21–1.22: the daemon pulls the NAR with STDERR_READ.
	return nil
}

// encodeAddToStoreNar re-encodes AddToStoreNar from q.Info, so what is
// forwarded is what was decided on (the registration time, which the
// daemon overwrites for an untrusted client anyway, is sent as 0).
func encodeAddToStoreNar(q *Request) []byte {
	i := q.Info
	b := new(request).u64(uint64(OpAddToStoreNar)).
		str(i.Path).str(i.Deriver).str(q.narRaw).strs(i.References).
		u64(0).u64(i.NarSize).bool(i.Ultimate).strs(i.Sigs).str(i.CA).
		bool(q.Repair).bool(q.DontCheckSigs)
	return b.Bytes()
}

func readBuildDerivation(r *reader, q *Request) error {
	var err error
	if q.Path, err = r.string("derivation path", maxPathLen); err != nil {
		return err
	}
	d := &InlineDerivation{}
	q.Derivation = d
	n, err := r.count("outputs", maxDrvOutputs)
	if err != nil {
		return err
	}
	for range n {
		name, err := r.string("output name", maxPathLen)
		if err != nil {
			return err
		}
		d.Outputs = append(d.Outputs, name)
		for _, what := range []string{"output path", "output hash algorithm", "output hash"} {
			if _, err := r.string(what, maxHashLen+maxPathLen); err != nil {
				return err
			}
		}
	}
	if _, err = r.strings("input sources", maxListLen, maxPathLen); err != nil {
		return err
	}
	if d.Platform, err = r.string("platform", maxPathLen); err != nil {
		return err
	}
	if d.Builder, err = r.string("builder", maxPathLen); err != nil {
		return err
	}
	if _, err = r.strings("args", maxListLen, maxDrvEnvLen); err != nil {
		return err
	}
	m, err := r.count("env", maxListLen)
	if err != nil {
		return err
	}
	for range m {
		if _, err := r.string("env name", maxSettingLen); err != nil {
			return err
		}
		if err := r.skipCharged("env value", maxDrvEnvLen); err != nil {
			return err
		}
	}
	q.Mode, err = readBuildMode(r)
	return err
}

// readSettings reads SetOptions' fields in daemon.cc's order.
func readSettings(r *reader, v ProtocolVersion) (*Settings, error) {
	s := &Settings{}
	var f [12]uint64
	for i := range f {
		var err error
		if f[i], err = r.uint64("setting"); err != nil {
			return nil, err
		}
	}
	s.KeepFailed = f[0] != 0
	s.KeepGoing = f[1] != 0
	s.TryFallback = f[2] != 0
	s.Verbosity = Verbosity(f[3])
	s.MaxBuildJobs = f[4]
	s.MaxSilentTime = secondsDuration(f[5])
	// f[6]: obsolete useBuildHook
	s.VerboseBuild = Verbosity(f[7]) == VerbosityError
	// f[8], f[9]: obsolete logType, printBuildTrace
	s.BuildCores = f[10]
	s.UseSubstitutes = f[11] != 0
	if v.Minor() >= verOverrides {
		n, err := r.count("overrides", maxSettings)
		if err != nil {
			return nil, err
		}
		s.Overrides = make(map[string]string, n)
		for range n {
			k, err := r.string("setting name", maxSettingLen)
			if err != nil {
				return nil, err
			}
			val, err := r.string("setting value", maxSettingLen)
			if err != nil {
				return nil, err
			}
			s.Overrides[k] = val
		}
	}
	return s, nil
}

// Describe names what the request is about, for a log line: its path, or
// its first target and how many more.
func (q *Request) Describe() string {
	list := func(xs []string) string {
		switch len(xs) {
		case 0:
			return ""
		case 1:
			return xs[0]
		}
		return fmt.Sprintf("%s (+%d more)", xs[0], len(xs)-1)
	}
	switch {
	case q.Path != "":
		return q.Path
	case len(q.Targets) > 0:
		return list(q.Targets)
	case q.Name != "":
		return q.Name
	case q.Settings != nil:
		var names []string
		for k := range q.Settings.Overrides {
			names = append(names, k)
		}
		return strings.Join(sortedCopy(names), " ")
	}
	return list(q.Paths)
}

func secondsDuration(s uint64) time.Duration {
	if s > uint64(math.MaxInt64/int64(time.Second)) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(s) * time.Second
}

func sortedCopy(xs []string) []string {
	out := slices.Clone(xs)
	slices.Sort(out)
	return out
}
