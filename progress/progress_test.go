package progress

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/closure"
)

const drvA = "/nix/store/00000000000000000000000000000000-alpha-1.0.drv"

func events() []closure.Event {
	return []closure.Event{
		{Kind: closure.EventEvaluating},
		{Kind: closure.EventPlan, WillBuild: []string{drvA, "/nix/store/11111111111111111111111111111111-beta.drv"}},
		{Kind: closure.EventBuildStart, Drv: drvA, Name: "alpha-1.0"},
		{Kind: closure.EventBuildLog, Drv: drvA, Name: "alpha-1.0", Line: "compiling"},
		{Kind: closure.EventBuildDone, Drv: drvA, Name: "alpha-1.0"},
		{Kind: closure.EventDone, OutPath: "/nix/store/x"},
	}
}

func TestPlainLinesAreStable(t *testing.T) {
	var out bytes.Buffer
	r := New(&out, Plain, false)
	for _, ev := range events() {
		r.Handle(ev)
	}
	want := `evaluating the sandbox configuration
2 derivations to build: alpha-1.0, beta
building alpha-1.0 (1/2)
finished alpha-1.0 (1/2)
built 1 derivation
`
	if out.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", out.String(), want)
	}
	if strings.Contains(out.String(), "\x1b[") {
		t.Fatal("escape codes in plain output")
	}
}

func TestVerboseShowsLogLines(t *testing.T) {
	var out bytes.Buffer
	r := New(&out, Plain, true)
	for _, ev := range events() {
		r.Handle(ev)
	}
	if !strings.Contains(out.String(), "alpha-1.0> compiling") {
		t.Fatalf("no log line: %s", out.String())
	}
}

func TestJSONIsOneEventPerLine(t *testing.T) {
	var out bytes.Buffer
	r := New(&out, JSON, false)
	for _, ev := range events() {
		r.Handle(ev)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(events())-1 { // the log line is only shown with -v
		t.Fatalf("%d lines: %s", len(lines), out.String())
	}
	for _, l := range lines {
		var ev closure.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Kind == "" {
			t.Fatalf("bad line %q: %v", l, err)
		}
	}
}

func TestPushLines(t *testing.T) {
	const to = "file:///srv/cache"
	for _, tc := range []struct {
		start closure.Event
		want  string
	}{
		{closure.Event{Kind: closure.EventPushStart, To: to, Expected: 3, Bytes: 3 << 20, Compression: "zstd", PublicKey: "team-1:AAAA"},
			"pushing 3 paths (3.0 MiB) to file:///srv/cache, compressed with zstd (compression= in the URL chooses another)\n" +
				"signing with key team-1; consumers trust it with: extra-trusted-public-keys = team-1:AAAA\n"},
		{closure.Event{Kind: closure.EventPushStart, To: to, Expected: 3, Bytes: 3 << 20, Compression: "xz", CompressionFromURL: true, Warning: "pushing unsigned paths"},
			"pushing 3 paths (3.0 MiB) to file:///srv/cache, compressed with xz (the URL's choice)\n" +
				"warning: pushing unsigned paths\n"},
	} {
		var out bytes.Buffer
		r := New(&out, Plain, false)
		for _, ev := range []closure.Event{
			tc.start,
			{Kind: closure.EventPushPlan, Expected: 2, To: to},
			{Kind: closure.EventPushPath, Name: "alpha-1.0", Done: 1, Bytes: 1 << 20},
			{Kind: closure.EventPushPath, Name: "beta", Done: 2, Bytes: 2 << 20},
			{Kind: closure.EventPushDone, To: to, Done: 2, Bytes: 2 << 20, Seconds: 1.25},
		} {
			r.Handle(ev)
		}
		want := tc.want + `the cache has 1 of them already
pushed alpha-1.0 (1/2, 1.0 MiB)
pushed beta (2/2, 2.0 MiB)
pushed 2 paths (2.0 MiB) to file:///srv/cache in 1.2 s
`
		if out.String() != want {
			t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
		}
	}
}

// A builder Nix killed is retried: the retry's plan lists it again, and the
// summary counts each derivation once.
func TestRetriedBuildIsCountedOnce(t *testing.T) {
	const drvB = "/nix/store/11111111111111111111111111111111-beta.drv"
	var out bytes.Buffer
	r := New(&out, Plain, false)
	for _, ev := range []closure.Event{
		{Kind: closure.EventPlan, WillBuild: []string{drvA, drvB}},
		{Kind: closure.EventBuildStart, Drv: drvA, Name: "alpha-1.0"},
		{Kind: closure.EventBuildDone, Drv: drvA, Name: "alpha-1.0"},
		{Kind: closure.EventBuildStart, Drv: drvB, Name: "beta"},
		{Kind: closure.EventBuildDone, Drv: drvB, Name: "beta"}, // killed, retried
		{Kind: closure.EventPlan, WillBuild: []string{drvB}},
		{Kind: closure.EventBuildStart, Drv: drvB, Name: "beta"},
		{Kind: closure.EventBuildDone, Drv: drvB, Name: "beta"},
		{Kind: closure.EventDone, OutPath: "/nix/store/x"},
	} {
		r.Handle(ev)
	}
	if !strings.HasSuffix(out.String(), "finished beta (2/2)\nbuilt 2 derivations\n") {
		t.Fatalf("a retried build was counted twice:\n%s", out.String())
	}
}
