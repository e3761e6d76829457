package nixdaemon

import "fmt"

// Op is a worker operation (WorkerProto::Op in worker-protocol.hh, wop* in
// Nix ≤ 2.17; identical numbers in Lix). Every operation a 1.21–1.38
// client can send is listed; numbers Nix has since retired from current
// sources (3, 4, 5, 16, 24, 25, 27) are kept because daemons of those
// protocol versions still serve them.
type Op uint64

const (
	OpIsValidPath                 Op = 1
	OpHasSubstitutes              Op = 3
	OpQueryPathHash               Op = 4
	OpQueryReferences             Op = 5
	OpQueryReferrers              Op = 6
	OpAddToStore                  Op = 7
	OpAddTextToStore              Op = 8
	OpBuildPaths                  Op = 9
	OpEnsurePath                  Op = 10
	OpAddTempRoot                 Op = 11
	OpAddIndirectRoot             Op = 12
	OpSyncWithGC                  Op = 13
	OpFindRoots                   Op = 14
	OpExportPath                  Op = 16
	OpQueryDeriver                Op = 18
	OpSetOptions                  Op = 19
	OpCollectGarbage              Op = 20
	OpQuerySubstitutablePathInfo  Op = 21
	OpQueryDerivationOutputs      Op = 22
	OpQueryAllValidPaths          Op = 23
	OpQueryFailedPaths            Op = 24 // removed in Nix 2.0: daemons answer with an error
	OpClearFailedPaths            Op = 25 // removed in Nix 2.0: daemons answer with an error
	OpQueryPathInfo               Op = 26
	OpImportPaths                 Op = 27
	OpQueryDerivationOutputNames  Op = 28
	OpQueryPathFromHashPart       Op = 29
	OpQuerySubstitutablePathInfos Op = 30
	OpQueryValidPaths             Op = 31
	OpQuerySubstitutablePaths     Op = 32
	OpQueryValidDerivers          Op = 33
	OpOptimiseStore               Op = 34
	OpVerifyStore                 Op = 35
	OpBuildDerivation             Op = 36
	OpAddSignatures               Op = 37
	OpNarFromPath                 Op = 38
	OpAddToStoreNar               Op = 39
	OpQueryMissing                Op = 40
	OpQueryDerivationOutputMap    Op = 41
	OpRegisterDrvOutput           Op = 42
	OpQueryRealisation            Op = 43
	OpAddMultipleToStore          Op = 44
	OpAddBuildLog                 Op = 45
	OpBuildPathsWithResults       Op = 46
	OpAddPermRoot                 Op = 47
)

var opNames = map[Op]string{
	OpIsValidPath:                 "IsValidPath",
	OpHasSubstitutes:              "HasSubstitutes",
	OpQueryPathHash:               "QueryPathHash",
	OpQueryReferences:             "QueryReferences",
	OpQueryReferrers:              "QueryReferrers",
	OpAddToStore:                  "AddToStore",
	OpAddTextToStore:              "AddTextToStore",
	OpBuildPaths:                  "BuildPaths",
	OpEnsurePath:                  "EnsurePath",
	OpAddTempRoot:                 "AddTempRoot",
	OpAddIndirectRoot:             "AddIndirectRoot",
	OpSyncWithGC:                  "SyncWithGC",
	OpFindRoots:                   "FindRoots",
	OpExportPath:                  "ExportPath",
	OpQueryDeriver:                "QueryDeriver",
	OpSetOptions:                  "SetOptions",
	OpCollectGarbage:              "CollectGarbage",
	OpQuerySubstitutablePathInfo:  "QuerySubstitutablePathInfo",
	OpQueryDerivationOutputs:      "QueryDerivationOutputs",
	OpQueryAllValidPaths:          "QueryAllValidPaths",
	OpQueryFailedPaths:            "QueryFailedPaths",
	OpClearFailedPaths:            "ClearFailedPaths",
	OpQueryPathInfo:               "QueryPathInfo",
	OpImportPaths:                 "ImportPaths",
	OpQueryDerivationOutputNames:  "QueryDerivationOutputNames",
	OpQueryPathFromHashPart:       "QueryPathFromHashPart",
	OpQuerySubstitutablePathInfos: "QuerySubstitutablePathInfos",
	OpQueryValidPaths:             "QueryValidPaths",
	OpQuerySubstitutablePaths:     "QuerySubstitutablePaths",
	OpQueryValidDerivers:          "QueryValidDerivers",
	OpOptimiseStore:               "OptimiseStore",
	OpVerifyStore:                 "VerifyStore",
	OpBuildDerivation:             "BuildDerivation",
	OpAddSignatures:               "AddSignatures",
	OpNarFromPath:                 "NarFromPath",
	OpAddToStoreNar:               "AddToStoreNar",
	OpQueryMissing:                "QueryMissing",
	OpQueryDerivationOutputMap:    "QueryDerivationOutputMap",
	OpRegisterDrvOutput:           "RegisterDrvOutput",
	OpQueryRealisation:            "QueryRealisation",
	OpAddMultipleToStore:          "AddMultipleToStore",
	OpAddBuildLog:                 "AddBuildLog",
	OpBuildPathsWithResults:       "BuildPathsWithResults",
	OpAddPermRoot:                 "AddPermRoot",
}

// Known reports whether op is one of the operations listed above.
func (op Op) Known() bool {
	_, ok := opNames[op]
	return ok
}

func (op Op) String() string {
	if name, ok := opNames[op]; ok {
		return name
	}
	return fmt.Sprintf("Op(%d)", uint64(op))
}

// BuildMode is the mode of BuildPaths, BuildPathsWithResults and
// BuildDerivation (BuildMode in store-api.hh / build-result.hh; on the
// wire a number read with readNum<uint8_t>, from 1.15 for BuildPaths).
type BuildMode uint8

const (
	BuildModeNormal BuildMode = 0
	BuildModeRepair BuildMode = 1
	BuildModeCheck  BuildMode = 2
)

func (m BuildMode) String() string {
	switch m {
	case BuildModeNormal:
		return "normal"
	case BuildModeRepair:
		return "repair"
	case BuildModeCheck:
		return "check"
	}
	return fmt.Sprintf("BuildMode(%d)", uint8(m))
}

// GCAction is the action of CollectGarbage (GCOptions::GCAction in
// gc-store.hh).
type GCAction uint64

const (
	GCReturnLive     GCAction = 0 // list the live paths; deletes nothing
	GCReturnDead     GCAction = 1 // list the dead paths; deletes nothing
	GCDeleteDead     GCAction = 2
	GCDeleteSpecific GCAction = 3
)

func (a GCAction) String() string {
	switch a {
	case GCReturnLive:
		return "return-live"
	case GCReturnDead:
		return "return-dead"
	case GCDeleteDead:
		return "delete-dead"
	case GCDeleteSpecific:
		return "delete-specific"
	}
	return fmt.Sprintf("GCAction(%d)", uint64(a))
}
