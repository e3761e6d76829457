package nixdaemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
)

// requestOps are the operations a fuzz input can pick with its second
// byte: every known one, plus two unknown.
var requestOps = func() []Op {
	var ops []Op
	for op := range opNames {
		ops = append(ops, op)
	}
	// Map order is random; the fuzzer needs a stable index.
	for i := range ops {
		for j := i + 1; j < len(ops); j++ {
			if ops[j] < ops[i] {
				ops[i], ops[j] = ops[j], ops[i]
			}
		}
	}
	return append(ops, 48, 1000)
}()

func opIndex(op Op) byte {
	for i, o := range requestOps {
		if o == op {
			return byte(i)
		}
	}
	panic(fmt.Sprintf("op %d not in requestOps", op))
}

// nar builds a NAR of a directory holding a file, an executable and a
// symlink, the way Nix's dumpPath writes it.
func narSample() []byte {
	q := script().str(narMagic).str("(").str("type").str("directory").
		str("entry").str("(").str("name").str("a").str("node").
		str("(").str("type").str("regular").str("contents").str("hello\n").str(")").str(")").
		str("entry").str("(").str("name").str("b").str("node").
		str("(").str("type").str("regular").str("executable").str("").str("contents").str("#!/bin/sh\n").str(")").str(")").
		str("entry").str("(").str("name").str("c").str("node").
		str("(").str("type").str("symlink").str("target").str("a").str(")").str(")").
		str("entry").str("(").str("name").str("d").str("node").
		str("(").str("type").str("directory").str(")").str(")").
		str(")")
	return q.Bytes()
}

func frames(chunks ...string) []byte {
	q := script()
	for _, c := range chunks {
		q.u64(uint64(len(c)))
		q.WriteString(c)
	}
	return q.u64(0).Bytes()
}

type requestSeed struct {
	op   Op
	v    ProtocolVersion
	body []byte // the request after the op code, body included
}

func requestSeeds() []requestSeed {
	const p = "/nix/store/00000000000000000000000000000000-x"
	const drv = "/nix/store/00000000000000000000000000000000-x.drv"
	settings := func(v ProtocolVersion) []byte {
		q := script().u64(0).u64(1).u64(0).u64(3).u64(2).u64(0).u64(1).u64(0).u64(0).u64(0).u64(0).u64(1)
		if v.Minor() >= 12 {
			q.u64(2).str("connect-timeout").str("5").str("substituters").str("http://x")
		}
		return q.Bytes()
	}
	nar := narSample()
	var seeds []requestSeed
	for _, v := range []ProtocolVersion{proto(21), proto(22), proto(24), proto(25), proto(27), proto(30), proto(31), proto(34), proto(37), proto(38)} {
		seeds = append(seeds,
			requestSeed{OpIsValidPath, v, script().str(p).Bytes()},
			requestSeed{OpQueryPathInfo, v, script().str(p).Bytes()},
			requestSeed{OpQueryValidPaths, v, func() []byte {
				q := script().strs([]string{p})
				if v.Minor() >= 27 {
					q.u64(1)
				}
				return q.Bytes()
			}()},
			requestSeed{OpQuerySubstitutablePathInfos, v, func() []byte {
				if v.Minor() < 22 {
					return script().strs([]string{p}).Bytes()
				}
				return script().u64(1).str(p).str("").Bytes()
			}()},
			requestSeed{OpAddTextToStore, v, script().str("x.drv").str("Derive([])").strs([]string{p}).Bytes()},
			requestSeed{OpBuildPaths, v, func() []byte {
				q := script().strs([]string{drv + "!out"})
				if v.Minor() >= 15 {
					q.u64(0)
				}
				return q.Bytes()
			}()},
			requestSeed{OpBuildPathsWithResults, v, script().strs([]string{drv + "!*"}).u64(2).Bytes()},
			requestSeed{OpQueryMissing, v, script().strs([]string{p, drv + "!out"}).Bytes()},
			requestSeed{OpSetOptions, v, settings(v)},
			requestSeed{OpCollectGarbage, v, script().u64(3).strs([]string{p}).u64(0).u64(1 << 20).u64(0).u64(0).u64(0).Bytes()},
			requestSeed{OpVerifyStore, v, script().u64(1).u64(0).Bytes()},
			requestSeed{OpAddSignatures, v, script().str(p).strs([]string{"k:c2ln"}).Bytes()},
			requestSeed{OpExportPath, v, script().str(p).u64(0).Bytes()},
			requestSeed{OpAddPermRoot, v, script().str(p).str("/tmp/root").Bytes()},
			requestSeed{OpBuildDerivation, v, script().str(drv).
				u64(1).str("out").str(p).str("").str("").
				strs(nil).str("x86_64-linux").str("/bin/sh").strs([]string{"-c", "echo"}).
				u64(1).str("out").str(p).u64(0).Bytes()},
			requestSeed{OpAddMultipleToStore, v, append(script().u64(0).u64(0).Bytes(), frames("abc", "defgh")...)},
			requestSeed{OpAddBuildLog, v, append(script().str(drv).Bytes(), frames("log line\n")...)},
			requestSeed{OpRegisterDrvOutput, v, func() []byte {
				if v.Minor() < 31 {
					return script().str("sha256:abc!out").str(p).Bytes()
				}
				return script().str(`{"id":"sha256:abc!out","outPath":"x"}`).Bytes()
			}()},
			requestSeed{OpAddToStoreNar, v, func() []byte {
				q := script().str(p).str("").str("sha256:0000").strs(nil).u64(0).u64(uint64(len(nar))).u64(1).strs(nil).str("").u64(0).u64(0)
				if v.Minor() >= 23 {
					return append(q.Bytes(), frames(string(nar))...)
				}
				return q.Bytes()
			}()},
			requestSeed{OpAddToStore, v, func() []byte {
				if v.Minor() >= 25 {
					return append(script().str("x").str("nar:sha256").strs(nil).u64(0).Bytes(), frames(string(nar))...)
				}
				return append(script().str("x").u64(1).u64(1).str("sha256").Bytes(), nar...)
			}()},
			requestSeed{OpFindRoots, v, nil},
			requestSeed{48, v, script().u64(7).Bytes()},
		)
	}
	return seeds
}

// readWhole parses one request from body and, for a streamed one, its
// body too, the way the relay does; it returns what was consumed.
func readWhole(op Op, v ProtocolVersion, body []byte) (*Request, []byte, error) {
	var captured bytes.Buffer
	r := newReader(bytes.NewReader(body))
	r.reset(op.String())
	r.capture = &captured
	q, err := readRequest(r, op, v)
	if err != nil {
		return nil, captured.Bytes(), err
	}
	switch q.body {
	case bodyFramed:
		x := &relay{cr: r}
		err = x.copyFrames()
	case bodyNAR:
		err = skipNAR(r)
	}
	return q, captured.Bytes(), err
}

func TestRequestSeedsParse(t *testing.T) {
	for _, s := range requestSeeds() {
		q, consumed, err := readWhole(s.op, s.v, s.body)
		if s.op == 48 {
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Errorf("%s %s: want a protocol error, got %v", s.v, s.op, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %s: %v", s.v, s.op, err)
			continue
		}
		if !bytes.Equal(consumed, s.body) {
			t.Errorf("%s %s: consumed %d of %d bytes", s.v, s.op, len(consumed), len(s.body))
		}
		if q.Op == OpSetOptions && s.v.Minor() >= 12 && q.Settings.Overrides["substituters"] != "http://x" {
			t.Errorf("%s: overrides %v", s.v, q.Settings.Overrides)
		}
		if q.Op == OpBuildPathsWithResults && q.Mode != BuildModeCheck {
			t.Errorf("%s: build mode %s", s.v, q.Mode)
		}
		if q.Op == OpAddToStoreNar && (!q.Info.Ultimate || q.Info.NarSize == 0) {
			t.Errorf("%s: AddToStoreNar info %+v", s.v, q.Info)
		}
	}
}

// FuzzReadRequest feeds arbitrary bytes to the server-side request
// parser, as a client would send them: no panic, bounded work, and a
// successful parse consumed exactly a prefix of the input and parses the
// same again from just those bytes.
func FuzzReadRequest(f *testing.F) {
	for _, s := range requestSeeds() {
		vi := 0
		for i, v := range fuzzVersions {
			if v <= s.v {
				vi = i
			}
		}
		f.Add(append([]byte{byte(vi), opIndex(s.op)}, s.body...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		v := fuzzVersion(data[0])
		op := requestOps[int(data[1])%len(requestOps)]
		q, consumed, err := readWhole(op, v, data[2:])
		if err != nil {
			var pe *ProtocolError
			if !errors.As(err, &pe) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("%s %s: unexpected error kind %T: %v", v, op, err, err)
			}
			return
		}
		if !bytes.HasPrefix(data[2:], consumed) {
			t.Fatalf("%s %s: captured bytes are not the input's prefix", v, op)
		}
		q2, consumed2, err := readWhole(op, v, consumed)
		if err != nil || !bytes.Equal(consumed2, consumed) {
			t.Fatalf("%s %s: re-parsing the consumed bytes: %v", v, op, err)
		}
		q.raw, q2.raw = nil, nil
		if !reflect.DeepEqual(q, q2) {
			t.Fatalf("%s %s: parse differs on re-read:\n%+v\n%+v", v, op, q, q2)
		}
		_ = q.Describe()
	})
}

func TestSkipNARShapes(t *testing.T) {
	file := script().str(narMagic).str("(").str("type").str("regular").str("contents").str("x").str(")").Bytes()
	link := script().str(narMagic).str("(").str("type").str("symlink").str("target").str("/y").str(")").Bytes()
	for name, nar := range map[string][]byte{"directory": narSample(), "file": file, "symlink": link} {
		trailer := []byte("NEXT")
		r := newReader(bytes.NewReader(append(append([]byte{}, nar...), trailer...)))
		r.reset("nar")
		if err := skipNAR(r); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		rest, _ := io.ReadAll(r.br)
		if !bytes.Equal(rest, trailer) {
			t.Errorf("%s: skipNAR stopped before or after the archive's end (left %q)", name, rest)
		}
	}
	bad := script().str(narMagic).str("(").str("type").str("fifo").str(")").Bytes()
	r := newReader(bytes.NewReader(bad))
	var pe *ProtocolError
	if err := skipNAR(r); !errors.As(err, &pe) {
		t.Errorf("a NAR with an unknown node type: %v", err)
	}
}

// FuzzSkipNAR: arbitrary archives end in a clean error or at a point
// from which the same bytes parse identically.
func FuzzSkipNAR(f *testing.F) {
	f.Add(narSample())
	f.Fuzz(func(t *testing.T, data []byte) {
		var captured bytes.Buffer
		r := newReader(bytes.NewReader(data))
		r.capture = &captured
		err := skipNAR(r)
		if err != nil {
			var pe *ProtocolError
			if !errors.As(err, &pe) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected error kind %T: %v", err, err)
			}
			return
		}
		if !bytes.HasPrefix(data, captured.Bytes()) {
			t.Fatal("captured bytes are not the input's prefix")
		}
		if err := skipNAR(newReader(bytes.NewReader(captured.Bytes()))); err != nil {
			t.Fatalf("the consumed archive does not parse alone: %v", err)
		}
	})
}
