package nixdaemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/nixhash"
)

// Each operation below writes what RemoteStore / BasicClientConnection
// write for it and reads what daemon.cc's performOp answers.

// SetOptions sends client settings (wopSetOptions). Without it the daemon
// uses its own configuration.
func (c *Client) SetOptions(ctx context.Context, s Settings) error {
	return c.do(ctx, "SetOptions", func() error {
		verbose := VerbosityVomit
		if s.VerboseBuild {
			verbose = VerbosityError // the daemon tests lvlError == this
		}
		q := new(request).u64(uint64(OpSetOptions)).
			bool(s.KeepFailed).
			bool(s.KeepGoing).
			bool(s.TryFallback).
			u64(uint64(s.Verbosity)).
			u64(s.MaxBuildJobs).
			u64(uint64(max(s.MaxSilentTime, 0) / time.Second)).
			bool(true). // obsolete useBuildHook
			u64(uint64(verbose)).
			u64(0). // obsolete logType
			u64(0). // obsolete printBuildTrace
			u64(s.BuildCores).
			bool(s.UseSubstitutes)
		if c.version.Minor() >= verOverrides {
			q.u64(uint64(len(s.Overrides)))
			for _, k := range slices.Sorted(maps.Keys(s.Overrides)) {
				q.str(k).str(s.Overrides[k])
			}
		}
		if err := c.send(q); err != nil {
			return err
		}
		return c.stderr()
	})
}

// IsValidPath reports whether path is a valid store path (wopIsValidPath).
// A path that is not a syntactically valid store path is a DaemonError.
func (c *Client) IsValidPath(ctx context.Context, path string) (bool, error) {
	var valid bool
	err := c.do(ctx, "IsValidPath", func() error {
		if err := c.send(new(request).u64(uint64(OpIsValidPath)).str(path)); err != nil {
			return err
		}
		if err := c.stderr(); err != nil {
			return err
		}
		var err error
		valid, err = c.rd.bool("validity")
		return err
	})
	return valid, err
}

// QueryPathInfo returns what the daemon knows about path
// (wopQueryPathInfo). For a path that is not valid it returns an error
// wrapping ErrInvalidPath.
func (c *Client) QueryPathInfo(ctx context.Context, path string) (*PathInfo, error) {
	var info *PathInfo
	err := c.do(ctx, "QueryPathInfo", func() error {
		if err := c.send(new(request).u64(uint64(OpQueryPathInfo)).str(path)); err != nil {
			return err
		}
		if err := c.stderr(); err != nil {
			return err
		}
		// Daemons ≥ 1.17 answer "valid" first (older ones sent an error).
		valid, err := c.rd.bool("validity")
		if err != nil {
			return err
		}
		if !valid {
			return fmt.Errorf("nixdaemon: QueryPathInfo %s: %w", path, ErrInvalidPath)
		}
		info, err = c.readPathInfo(path)
		return err
	})
	return info, err
}

// readPathInfo reads UnkeyedValidPathInfo (worker-protocol.cc).
func (c *Client) readPathInfo(p string) (*PathInfo, error) {
	r := c.rd
	info := &PathInfo{Path: p}
	var err error
	if info.Deriver, err = r.string("deriver", maxPathLen); err != nil {
		return nil, err
	}
	rawHash, err := r.string("narHash", maxHashLen)
	if err != nil {
		return nil, err
	}
	sha256 := nixhash.Algorithm(nixhash.SHA256)
	h, err := nixhash.ParseAny(rawHash, &sha256)
	if err != nil {
		return nil, &ProtocolError{Op: r.op, Msg: fmt.Sprintf("narHash %q", rawHash), Err: err}
	}
	info.NarHash = h.Format(nixhash.NixBase32, true)
	if info.References, err = r.strings("references", maxListLen, maxPathLen); err != nil {
		return nil, err
	}
	regTime, err := r.uint64("registrationTime")
	if err != nil {
		return nil, err
	}
	if regTime > math.MaxInt64 {
		return nil, protoErr(r.op, "registrationTime %d out of range", regTime)
	}
	info.RegistrationTime = time.Unix(int64(regTime), 0)
	if info.NarSize, err = r.uint64("narSize"); err != nil {
		return nil, err
	}
	if c.version.Minor() >= verPathInfoMeta {
		if info.Ultimate, err = r.bool("ultimate"); err != nil {
			return nil, err
		}
		if info.Sigs, err = r.strings("sigs", maxListLen, maxSigLen); err != nil {
			return nil, err
		}
		if info.CA, err = r.string("ca", maxHashLen); err != nil {
			return nil, err
		}
	}
	return info, nil
}

// QueryMissing tells what realising paths would build, substitute or
// cannot do (wopQueryMissing).
func (c *Client) QueryMissing(ctx context.Context, paths ...DerivedPath) (*Missing, error) {
	var m *Missing
	err := c.do(ctx, "QueryMissing", func() error {
		enc, err := encodeDerivedPaths(paths, c.version)
		if err != nil {
			return err
		}
		if err := c.send(new(request).u64(uint64(OpQueryMissing)).strs(enc)); err != nil {
			return err
		}
		if err := c.stderr(); err != nil {
			return err
		}
		r := c.rd
		m = &Missing{}
		if m.WillBuild, err = r.strings("willBuild", maxListLen, maxPathLen); err != nil {
			return err
		}
		if m.WillSubstitute, err = r.strings("willSubstitute", maxListLen, maxPathLen); err != nil {
			return err
		}
		if m.Unknown, err = r.strings("unknown", maxListLen, maxPathLen); err != nil {
			return err
		}
		if m.DownloadSize, err = r.uint64("downloadSize"); err != nil {
			return err
		}
		m.NarSize, err = r.uint64("narSize")
		return err
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// BuildPaths realises paths in normal build mode (wopBuildPaths): builds or
// substitutes what is missing. A failed build is a DaemonError naming it.
// Build progress arrives as events while it runs.
func (c *Client) BuildPaths(ctx context.Context, paths ...DerivedPath) error {
	return c.do(ctx, "BuildPaths", func() error {
		enc, err := encodeDerivedPaths(paths, c.version)
		if err != nil {
			return err
		}
		q := new(request).u64(uint64(OpBuildPaths)).strs(enc)
		if c.version.Minor() >= verBuildMode {
			q.u64(0) // bmNormal
		}
		if err := c.send(q); err != nil {
			return err
		}
		if err := c.stderr(); err != nil {
			return err
		}
		_, err = c.rd.uint64("result")
		return err
	})
}

// BuildPathsWithResults is BuildPaths with a result per path
// (wopBuildPathsWithResults, protocol ≥ 1.34; older daemons get an
// *UnsupportedError and callers fall back to BuildPaths). A failed build is
// a result with a failure Status, not an error.
func (c *Client) BuildPathsWithResults(ctx context.Context, paths ...DerivedPath) ([]BuildResult, error) {
	if c.version.Minor() < verBuildWithResults {
		// Refused before anything is sent: the connection stays usable
		// for the BuildPaths fallback.
		return nil, &UnsupportedError{Op: "BuildPathsWithResults", Need: proto(verBuildWithResults), Version: c.version}
	}
	var results []BuildResult
	err := c.do(ctx, "BuildPathsWithResults", func() error {
		enc, err := encodeDerivedPaths(paths, c.version)
		if err != nil {
			return err
		}
		if err := c.send(new(request).u64(uint64(OpBuildPathsWithResults)).strs(enc).u64(0)); err != nil {
			return err
		}
		if err := c.stderr(); err != nil {
			return err
		}
		n, err := c.rd.count("build results", maxListLen)
		if err != nil {
			return err
		}
		results = make([]BuildResult, 0, min(n, preallocCap))
		for range n {
			res, err := c.readKeyedBuildResult()
			if err != nil {
				return err
			}
			results = append(results, res)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// readKeyedBuildResult reads a DerivedPath then a BuildResult
// (worker-protocol.cc, without the realisation-with-path feature, which
// this client never asks for).
func (c *Client) readKeyedBuildResult() (BuildResult, error) {
	r := c.rd
	var res BuildResult
	key, err := r.string("build result path", maxDerivedPathLen)
	if err != nil {
		return res, err
	}
	res.Path = parseDerivedPath(key, c.version)
	status, err := r.uint64("build status")
	if err != nil {
		return res, err
	}
	res.Status = BuildStatus(status)
	if res.ErrorMsg, err = r.string("build error message", maxLogLen); err != nil {
		return res, err
	}
	if c.version.Minor() >= verBuildTimes {
		if res.TimesBuilt, err = r.uint64("timesBuilt"); err != nil {
			return res, err
		}
		if res.IsNonDeterministic, err = r.bool("isNonDeterministic"); err != nil {
			return res, err
		}
		start, err := r.uint64("startTime")
		if err != nil {
			return res, err
		}
		stop, err := r.uint64("stopTime")
		if err != nil {
			return res, err
		}
		res.StartTime, res.StopTime = unixTime(start), unixTime(stop)
	}
	if c.version.Minor() >= verCPUTimes {
		if res.CPUUser, err = c.readOptionalMicros("cpuUser"); err != nil {
			return res, err
		}
		if res.CPUSystem, err = c.readOptionalMicros("cpuSystem"); err != nil {
			return res, err
		}
	}
	if c.version.Minor() >= verBuiltOutputs {
		// map<DrvOutput id "hash!out", Realisation JSON {"outPath": ...}>
		m, err := r.stringMap("builtOutputs", maxListLen, maxLogLen)
		if err != nil {
			return res, err
		}
		res.BuiltOutputs = make(map[string]string, len(m))
		for id, js := range m {
			_, name, ok := strings.Cut(id, "!")
			if !ok || name == "" {
				return res, protoErr(r.op, "built output id %q has no output name", id)
			}
			var real struct {
				OutPath string `json:"outPath"`
			}
			if err := json.Unmarshal([]byte(js), &real); err != nil || real.OutPath == "" {
				return res, &ProtocolError{Op: r.op, Msg: fmt.Sprintf("realisation of %q", id), Err: err}
			}
			res.BuiltOutputs[name] = absStorePath(real.OutPath, res.Path.Path)
		}
	}
	return res, nil
}

// readOptionalMicros reads std::optional<std::chrono::microseconds>: a tag
// (0 none, 1 some) then a signed count.
func (c *Client) readOptionalMicros(what string) (*time.Duration, error) {
	tag, err := c.rd.uint64(what + " tag")
	if err != nil {
		return nil, err
	}
	switch tag {
	case 0:
		return nil, nil
	case 1:
		us, err := c.rd.uint64(what)
		if err != nil {
			return nil, err
		}
		d := time.Duration(int64(us)) * time.Microsecond
		return &d, nil
	}
	return nil, protoErr(c.rd.op, "%s: invalid optional tag %d", what, tag)
}

// AddTempRoot protects path from garbage collection while this connection
// stays open (wopAddTempRoot).
func (c *Client) AddTempRoot(ctx context.Context, path string) error {
	return c.do(ctx, "AddTempRoot", func() error {
		if err := c.send(new(request).u64(uint64(OpAddTempRoot)).str(path)); err != nil {
			return err
		}
		if err := c.stderr(); err != nil {
			return err
		}
		_, err := c.rd.uint64("result")
		return err
	})
}

// AddIndirectRoot registers link, a symlink to a store path, as a GC root
// (wopAddIndirectRoot): the path stays alive while the link exists. A
// relative link is made absolute first, since the daemon's working
// directory is not ours.
func (c *Client) AddIndirectRoot(ctx context.Context, link string) error {
	abs, err := filepath.Abs(link)
	if err != nil {
		return fmt.Errorf("nixdaemon: AddIndirectRoot: %w", err)
	}
	return c.do(ctx, "AddIndirectRoot", func() error {
		if err := c.send(new(request).u64(uint64(OpAddIndirectRoot)).str(abs)); err != nil {
			return err
		}
		if err := c.stderr(); err != nil {
			return err
		}
		_, err := c.rd.uint64("result")
		return err
	})
}

func unixTime(sec uint64) time.Time {
	if sec == 0 || sec > math.MaxInt64 {
		return time.Time{}
	}
	return time.Unix(int64(sec), 0)
}

// absStorePath makes a realisation's outPath (a base name in every Nix
// that sends one) absolute, in the store directory of the derivation.
func absStorePath(p, drv string) string {
	if strings.HasPrefix(p, "/") {
		return p
	}
	dir := "/nix/store"
	if strings.HasPrefix(drv, "/") {
		dir = path.Dir(drv)
	}
	return path.Join(dir, p)
}

// NarFromPath writes the NAR serialisation of path to w (wopNarFromPath).
// The archive is parsed as it streams, so w sees exactly one NAR; an error
// from w ends the call and closes the Client (the rest of the archive is
// still on the wire).
func (c *Client) NarFromPath(ctx context.Context, path string, w io.Writer) error {
	return c.do(ctx, "NarFromPath", func() error {
		if err := c.send(new(request).u64(uint64(OpNarFromPath)).str(path)); err != nil {
			return err
		}
		if err := c.stderr(); err != nil {
			return err
		}
		c.rd.capture = w
		defer func() { c.rd.capture, c.rd.captureErr = nil, nil }()
		return skipNAR(c.rd)
	})
}
