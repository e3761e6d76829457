package nixdaemon

// skipReply consumes the reply of q's operation, the part after the
// daemon's STDERR_LAST, as daemon.cc's performOp writes it at q.Version.
// It holds nothing: with the reader capturing, the reply streams through
// to the client.
func skipReply(r *reader, q *Request) error {
	v := q.Version
	switch q.Op {
	case OpIsValidPath, OpHasSubstitutes, OpExportPath, OpBuildPaths, OpEnsurePath,
		OpAddTempRoot, OpAddIndirectRoot, OpSyncWithGC, OpOptimiseStore, OpVerifyStore,
		OpAddSignatures, OpAddBuildLog:
		_, err := r.uint64("result")
		return err

	case OpQueryValidPaths, OpQuerySubstitutablePaths, OpQueryReferences, OpQueryReferrers,
		OpQueryValidDerivers, OpQueryDerivationOutputs, OpQueryDerivationOutputNames,
		OpQueryAllValidPaths, OpImportPaths:
		return skipStrings(r, "paths", maxReplyPaths, maxPathLen)

	case OpQueryRealisation:
		// < 1.31 a set of out paths, from 1.31 a set of realisations (JSON).
		return skipStrings(r, "realisations", maxListLen, maxRealisation)

	case OpQueryPathHash, OpQueryDeriver, OpQueryPathFromHashPart, OpAddTextToStore, OpAddPermRoot:
		_, err := r.token("path", maxRootLinkLen)
		return err

	case OpQueryDerivationOutputMap:
		// map<string, optional<StorePath>>: optional as "" for none.
		return skipPairs(r, "outputs", maxListLen, maxPathLen, maxPathLen)

	case OpFindRoots:
		return skipPairs(r, "roots", maxReplyPaths, maxRootLinkLen, maxPathLen)

	case OpAddToStore:
		if _, err := r.token("store path", maxPathLen); err != nil {
			return err
		}
		if v.Minor() >= 25 {
			return skipPathInfo(r, v)
		}
		return nil

	case OpAddMultipleToStore, OpAddToStoreNar, OpSetOptions, OpRegisterDrvOutput:
		return nil

	case OpBuildPathsWithResults:
		n, err := r.count("build results", maxBuildResults)
		if err != nil {
			return err
		}
		for range n {
			if _, err := r.token("build result path", maxDerivedPathLen); err != nil {
				return err
			}
			if err := skipBuildResult(r, v); err != nil {
				return err
			}
		}
		return nil

	case OpBuildDerivation:
		return skipBuildResult(r, v)

	case OpCollectGarbage:
		if err := skipStrings(r, "deleted paths", maxReplyPaths, maxPathLen); err != nil {
			return err
		}
		if _, err := r.uint64("bytesFreed"); err != nil {
			return err
		}
		_, err := r.uint64("obsolete")
		return err

	case OpQuerySubstitutablePathInfo:
		found, err := r.uint64("found")
		if err != nil || found == 0 {
			return err
		}
		return skipSubstitutableInfo(r)

	case OpQuerySubstitutablePathInfos:
		n, err := r.count("infos", maxReplyPaths)
		if err != nil {
			return err
		}
		for range n {
			if _, err := r.token("store path", maxPathLen); err != nil {
				return err
			}
			if err := skipSubstitutableInfo(r); err != nil {
				return err
			}
		}
		return nil

	case OpQueryPathInfo:
		if v.Minor() >= verPathInfoValid {
			valid, err := r.bool("validity")
			if err != nil || !valid {
				return err
			}
		}
		return skipPathInfo(r, v)

	case OpNarFromPath:
		return skipNAR(r)

	case OpQueryMissing:
		for _, what := range []string{"willBuild", "willSubstitute", "unknown"} {
			if err := skipStrings(r, what, maxReplyPaths, maxPathLen); err != nil {
				return err
			}
		}
		if _, err := r.uint64("downloadSize"); err != nil {
			return err
		}
		_, err := r.uint64("narSize")
		return err
	}
	return protoErr(r.op, "no reply format for %s", q.Op)
}

func skipStrings(r *reader, what string, maxCount, maxLen uint64) error {
	n, err := r.count(what, maxCount)
	if err != nil {
		return err
	}
	for range n {
		if _, err := r.token(what, maxLen); err != nil {
			return err
		}
	}
	return nil
}

func skipPairs(r *reader, what string, maxCount, maxKey, maxValue uint64) error {
	n, err := r.count(what, maxCount)
	if err != nil {
		return err
	}
	for range n {
		if _, err := r.token(what, maxKey); err != nil {
			return err
		}
		if _, err := r.token(what, maxValue); err != nil {
			return err
		}
	}
	return nil
}

// skipPathInfo consumes UnkeyedValidPathInfo (worker-protocol.cc).
func skipPathInfo(r *reader, v ProtocolVersion) error {
	if _, err := r.token("deriver", maxPathLen); err != nil {
		return err
	}
	if _, err := r.token("narHash", maxHashLen); err != nil {
		return err
	}
	if err := skipStrings(r, "references", maxReplyPaths, maxPathLen); err != nil {
		return err
	}
	if _, err := r.uint64("registrationTime"); err != nil {
		return err
	}
	if _, err := r.uint64("narSize"); err != nil {
		return err
	}
	if v.Minor() >= verPathInfoMeta {
		if _, err := r.bool("ultimate"); err != nil {
			return err
		}
		if err := skipStrings(r, "sigs", maxListLen, maxSigLen); err != nil {
			return err
		}
		if _, err := r.token("ca", maxHashLen); err != nil {
			return err
		}
	}
	return nil
}

// skipSubstitutableInfo consumes deriver, references, downloadSize,
// narSize (daemon.cc, QuerySubstitutablePathInfo(s)).
func skipSubstitutableInfo(r *reader) error {
	if _, err := r.token("deriver", maxPathLen); err != nil {
		return err
	}
	if err := skipStrings(r, "references", maxReplyPaths, maxPathLen); err != nil {
		return err
	}
	if _, err := r.uint64("downloadSize"); err != nil {
		return err
	}
	_, err := r.uint64("narSize")
	return err
}

// skipBuildResult consumes BuildResult (worker-protocol.cc): status,
// errorMsg; ≥ 1.29 timesBuilt, isNonDeterministic, startTime, stopTime;
// ≥ 1.37 cpuUser, cpuSystem (optional microseconds); ≥ 1.28 builtOutputs
// (DrvOutput id → Realisation JSON).
func skipBuildResult(r *reader, v ProtocolVersion) error {
	if _, err := r.uint64("status"); err != nil {
		return err
	}
	if _, err := r.token("error message", maxLogLen); err != nil {
		return err
	}
	if v.Minor() >= verBuildTimes {
		for _, what := range []string{"timesBuilt", "isNonDeterministic", "startTime", "stopTime"} {
			if _, err := r.uint64(what); err != nil {
				return err
			}
		}
	}
	if v.Minor() >= verCPUTimes {
		for _, what := range []string{"cpuUser", "cpuSystem"} {
			tag, err := r.uint64(what + " tag")
			if err != nil {
				return err
			}
			switch tag {
			case 0:
			case 1:
				if _, err := r.uint64(what); err != nil {
					return err
				}
			default:
				return protoErr(r.op, "%s: invalid optional tag %d", what, tag)
			}
		}
	}
	if v.Minor() >= verBuiltOutputs {
		return skipPairs(r, "builtOutputs", maxListLen, maxRealisation, maxLogLen)
	}
	return nil
}
