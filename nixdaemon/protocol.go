package nixdaemon

import "fmt"

// Every number in this file was checked against Nix's own source, not
// memory. The files, in NixOS/nix unless said otherwise:
//
//   - src/libstore/worker-protocol.hh (≤ 2.24) and
//     src/libstore/include/nix/store/worker-protocol.hh (current): magics,
//     PROTOCOL_VERSION, MINIMUM_PROTOCOL_VERSION (1.18), WorkerProto::Op,
//     STDERR_*;
//   - src/libstore/worker-protocol-connection.cc: client handshake (features
//     exchanged from 1.38), postHandshake (CPU affinity ≥ 1.14, reserveSpace
//     ≥ 1.11), processStderr, readFields;
//   - src/libstore/worker-protocol.cc: DerivedPath (≥ 1.30 "drv!out"),
//     BuildResult (≥ 1.28 builtOutputs, ≥ 1.29 times, ≥ 1.37 CPU times),
//     UnkeyedValidPathInfo (≥ 1.16 ultimate/sigs/ca), ClientHandshakeInfo
//     (≥ 1.33 Nix version, ≥ 1.35 trust), optional<TrustedFlag> (0/1/2);
//   - src/libstore/daemon.cc: server side of every operation used here,
//     TunnelLogger (activities only sent to clients ≥ 1.20, structured
//     errors ≥ 1.26), SetOptions field order;
//   - src/libutil/serialise.cc: readError / operator<<(Error);
//   - src/libutil/include/nix/util/logging.hh (was src/libutil/logging.hh):
//     ActivityType, ResultType, Logger::Field{tInt = 0, tString = 1};
//   - src/libutil/error.hh: Verbosity;
//   - src/libstore/build-result.hh and the worker-protocol BuildResult
//     status serialiser: build status codes;
//   - lix-project/lix lix/libstore/worker-protocol.hh and
//     lix/libutil/logging.hh: Lix pins 1.35, refuses clients < 1.35, and has
//     the same opcodes, STDERR_* and activity/result numbers.
//
// The Nix 2.8 daemon on the test machines answers the handshake with 1.34.

// Handshake magics (worker-protocol.hh).
const (
	workerMagic1 = 0x6e697863 // client → daemon, "cxin"
	workerMagic2 = 0x6478696f // daemon → client, "oixd"
)

// ProtocolVersion is a worker-protocol version as sent on the wire:
// major<<8 | minor (GET_PROTOCOL_MAJOR / GET_PROTOCOL_MINOR in
// worker-protocol.hh).
type ProtocolVersion uint16

// Major returns the major version (always 1 so far).
func (v ProtocolVersion) Major() int { return int(v >> 8) }

// Minor returns the minor version, the part that changes.
func (v ProtocolVersion) Minor() int { return int(v & 0xff) }

func (v ProtocolVersion) String() string { return fmt.Sprintf("%d.%d", v.Major(), v.Minor()) }

func proto(minor uint8) ProtocolVersion { return ProtocolVersion(1<<8 | uint16(minor)) }

const (
	// ClientVersion is the version this client offers. 1.38 is the newest
	// whose full format this package implements (feature exchange, CPU
	// times in BuildResult); a newer daemon negotiates down to it, an older
	// one (Nix 2.8: 1.34, Lix: 1.35) down to its own.
	ClientVersion = ProtocolVersion(1<<8 | 38)

	// MinDaemonVersion is the oldest daemon accepted: 1.21 (0x115), the
	// protocol of Nix 2.3, which Debian 11 still ships. Below 1.20 the
	// daemon sends no activity messages at all (TunnelLogger drops them), so
	// a progress display would be blind. From 1.21 on, the format
	// differences are few and each is handled and tested here: string
	// errors before 1.26, path-with-outputs strings before 1.30, shorter
	// BuildResults before 1.28/1.29, no daemon version before 1.33.
	MinDaemonVersion = ProtocolVersion(1<<8 | 21)
)

// Version thresholds used below (each cited file above has the same
// comparisons).
const (
	verReserveSpace      = 11 // client sends obsolete reserveSpace
	verOverrides         = 12 // SetOptions carries the overrides map
	verCPUAffinity       = 14 // client sends obsolete CPU affinity flag
	verBuildMode         = 15 // BuildPaths carries a build mode
	verPathInfoMeta      = 16 // path info has ultimate, sigs, ca
	verPathInfoValid     = 17 // QueryPathInfo reply starts with a "valid" bool
	verActivities        = 20 // daemon sends START/STOP_ACTIVITY and RESULT
	verStructuredErrors  = 26 // STDERR_ERROR uses the structured format
	verBuiltOutputs      = 28 // BuildResult has builtOutputs
	verBuildTimes        = 29 // BuildResult has timesBuilt..stopTime
	verDerivedPath       = 30 // derived paths are "drv!out1,out2" / "drv!*"
	verDaemonNixVersion  = 33 // daemon sends its Nix version after the handshake
	verBuildWithResults  = 34 // BuildPathsWithResults exists
	verTrust             = 35 // daemon sends whether it trusts us
	verCPUTimes          = 37 // BuildResult has cpuUser, cpuSystem
	verFeatureExchange   = 38 // both sides exchange feature sets
	maxDaemonNixVersion  = 1 << 10
	maxDaemonFeatures    = 1 << 10
	maxDaemonFeatureName = 1 << 10
)

// Messages on the stderr channel (worker-protocol.hh).
const (
	stderrNext          = 0x6f6c6d67
	stderrRead          = 0x64617461 // data needed from source
	stderrWrite         = 0x64617416 // data for sink
	stderrLast          = 0x616c7473
	stderrError         = 0x63787470
	stderrStartActivity = 0x53545254
	stderrStopActivity  = 0x53544f50
	stderrResult        = 0x52534c54
)

// Logger::Field type tags (logging.hh).
const (
	fieldInt    = 0
	fieldString = 1
)

// Verbosity is Nix's log level (error.hh). Lower is more important.
type Verbosity uint64

const (
	VerbosityError     Verbosity = 0
	VerbosityWarn      Verbosity = 1
	VerbosityNotice    Verbosity = 2
	VerbosityInfo      Verbosity = 3
	VerbosityTalkative Verbosity = 4
	VerbosityChatty    Verbosity = 5
	VerbosityDebug     Verbosity = 6
	VerbosityVomit     Verbosity = 7
)

func (v Verbosity) String() string {
	switch v {
	case VerbosityError:
		return "error"
	case VerbosityWarn:
		return "warn"
	case VerbosityNotice:
		return "notice"
	case VerbosityInfo:
		return "info"
	case VerbosityTalkative:
		return "talkative"
	case VerbosityChatty:
		return "chatty"
	case VerbosityDebug:
		return "debug"
	case VerbosityVomit:
		return "vomit"
	}
	return fmt.Sprintf("verbosity(%d)", uint64(v))
}

// ActivityType is the kind of a daemon activity (ActivityType in
// logging.hh). Values this package does not know are passed through.
type ActivityType uint64

const (
	ActUnknown       ActivityType = 0
	ActCopyPath      ActivityType = 100
	ActFileTransfer  ActivityType = 101
	ActRealise       ActivityType = 102
	ActCopyPaths     ActivityType = 103
	ActBuilds        ActivityType = 104
	ActBuild         ActivityType = 105 // fields: drv path, machine, round, nrRounds
	ActOptimiseStore ActivityType = 106
	ActVerifyPaths   ActivityType = 107
	ActSubstitute    ActivityType = 108 // fields: store path, substituter
	ActQueryPathInfo ActivityType = 109 // fields: store path, substituter
	ActPostBuildHook ActivityType = 110 // fields: store path
	ActBuildWaiting  ActivityType = 111
	ActFetchTree     ActivityType = 112 // current Nix only
)

func (t ActivityType) String() string {
	switch t {
	case ActUnknown:
		return "unknown"
	case ActCopyPath:
		return "copy-path"
	case ActFileTransfer:
		return "file-transfer"
	case ActRealise:
		return "realise"
	case ActCopyPaths:
		return "copy-paths"
	case ActBuilds:
		return "builds"
	case ActBuild:
		return "build"
	case ActOptimiseStore:
		return "optimise-store"
	case ActVerifyPaths:
		return "verify-paths"
	case ActSubstitute:
		return "substitute"
	case ActQueryPathInfo:
		return "query-path-info"
	case ActPostBuildHook:
		return "post-build-hook"
	case ActBuildWaiting:
		return "build-waiting"
	case ActFetchTree:
		return "fetch-tree"
	}
	return fmt.Sprintf("activity(%d)", uint64(t))
}

// ResultType is the kind of a STDERR_RESULT message (ResultType in
// logging.hh). Values this package does not know are passed through.
type ResultType uint64

const (
	ResFileLinked       ResultType = 100 // fields: bytes linked
	ResBuildLogLine     ResultType = 101 // fields: line
	ResUntrustedPath    ResultType = 102
	ResCorruptedPath    ResultType = 103
	ResSetPhase         ResultType = 104 // fields: phase name
	ResProgress         ResultType = 105 // fields: done, expected, running, failed
	ResSetExpected      ResultType = 106 // fields: activity type, expected
	ResPostBuildLogLine ResultType = 107 // fields: line
	ResFetchStatus      ResultType = 108 // current Nix only
)

func (t ResultType) String() string {
	switch t {
	case ResFileLinked:
		return "file-linked"
	case ResBuildLogLine:
		return "build-log-line"
	case ResUntrustedPath:
		return "untrusted-path"
	case ResCorruptedPath:
		return "corrupted-path"
	case ResSetPhase:
		return "set-phase"
	case ResProgress:
		return "progress"
	case ResSetExpected:
		return "set-expected"
	case ResPostBuildLogLine:
		return "post-build-log-line"
	case ResFetchStatus:
		return "fetch-status"
	}
	return fmt.Sprintf("result(%d)", uint64(t))
}

// BuildStatus is the status of one BuildResult (BuildResult::Status in
// build-result.hh; the wire numbers are stable because the serve protocol
// uses them too).
type BuildStatus uint64

const (
	BuildBuilt                  BuildStatus = 0
	BuildSubstituted            BuildStatus = 1
	BuildAlreadyValid           BuildStatus = 2
	BuildPermanentFailure       BuildStatus = 3
	BuildInputRejected          BuildStatus = 4
	BuildOutputRejected         BuildStatus = 5
	BuildTransientFailure       BuildStatus = 6
	BuildCachedFailure          BuildStatus = 7
	BuildTimedOut               BuildStatus = 8
	BuildMiscFailure            BuildStatus = 9
	BuildDependencyFailed       BuildStatus = 10
	BuildLogLimitExceeded       BuildStatus = 11
	BuildNotDeterministic       BuildStatus = 12
	BuildResolvesToAlreadyValid BuildStatus = 13
	BuildNoSubstituters         BuildStatus = 14
)

// Success reports whether the status is one of the success statuses.
func (s BuildStatus) Success() bool {
	switch s {
	case BuildBuilt, BuildSubstituted, BuildAlreadyValid, BuildResolvesToAlreadyValid:
		return true
	}
	return false
}

func (s BuildStatus) String() string {
	switch s {
	case BuildBuilt:
		return "built"
	case BuildSubstituted:
		return "substituted"
	case BuildAlreadyValid:
		return "already-valid"
	case BuildPermanentFailure:
		return "permanent-failure"
	case BuildInputRejected:
		return "input-rejected"
	case BuildOutputRejected:
		return "output-rejected"
	case BuildTransientFailure:
		return "transient-failure"
	case BuildCachedFailure:
		return "cached-failure"
	case BuildTimedOut:
		return "timed-out"
	case BuildMiscFailure:
		return "misc-failure"
	case BuildDependencyFailed:
		return "dependency-failed"
	case BuildLogLimitExceeded:
		return "log-limit-exceeded"
	case BuildNotDeterministic:
		return "not-deterministic"
	case BuildResolvesToAlreadyValid:
		return "resolves-to-already-valid"
	case BuildNoSubstituters:
		return "no-substituters"
	}
	return fmt.Sprintf("status(%d)", uint64(s))
}

// TrustStatus says whether the daemon trusts this client (sent from 1.35).
type TrustStatus uint8

const (
	TrustUnknown    TrustStatus = 0 // daemon older than 1.35, or it did not say
	TrustTrusted    TrustStatus = 1
	TrustNotTrusted TrustStatus = 2
)

func (t TrustStatus) String() string {
	switch t {
	case TrustTrusted:
		return "trusted"
	case TrustNotTrusted:
		return "not trusted"
	}
	return "unknown"
}
