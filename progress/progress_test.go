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
