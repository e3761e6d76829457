package closure

import (
	"path"
	"strings"
	"sync"

	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
)

// EventKind names a build progress event. The names are a stable interface:
// `--log-format json` prints them.
type EventKind string

const (
	EventEvaluating EventKind = "evaluating"  // nix-instantiate is running
	EventPlan       EventKind = "plan"        // what will be built and fetched
	EventBuildStart EventKind = "build-start" // a derivation started building
	EventBuildPhase EventKind = "build-phase" // it entered a phase (unpackPhase, …)
	EventBuildLog   EventKind = "build-log"   // one line of its log
	EventBuildDone  EventKind = "build-done"  // it stopped (success or not)
	EventProgress   EventKind = "progress"    // derivations done / expected
	EventFetch      EventKind = "fetch"       // a path is being substituted
	EventDone       EventKind = "done"        // the closure is realised

	EventPushStart EventKind = "push-start" // closures go to a binary cache: where, how compressed, signed or not
	EventPushPlan  EventKind = "push-plan"  // how many of their paths the cache lacks
	EventPushPath  EventKind = "push-path"  // one path is in the cache
	EventPushDone  EventKind = "push-done"  // every path is
)

// Event is one progress event of a build.
type Event struct {
	Kind      EventKind `json:"event"`
	Drv       string    `json:"drv,omitempty"`
	Name      string    `json:"name,omitempty"` // the derivation's name, from its path
	Phase     string    `json:"phase,omitempty"`
	Line      string    `json:"line,omitempty"`
	WillBuild []string  `json:"willBuild,omitempty"`
	WillFetch []string  `json:"willFetch,omitempty"`
	Download  uint64    `json:"downloadBytes,omitempty"`
	Unpacked  uint64    `json:"unpackedBytes,omitempty"`
	Done      uint64    `json:"done,omitempty"`
	Expected  uint64    `json:"expected,omitempty"`
	Running   uint64    `json:"running,omitempty"`
	Failed    uint64    `json:"failed,omitempty"`
	OutPath   string    `json:"outPath,omitempty"`

	// Pushing: NAR bytes (of the closures at push-start, pushed so far
	// after), and the cache.
	Bytes              uint64  `json:"bytes,omitempty"`
	Seconds            float64 `json:"seconds,omitempty"`
	To                 string  `json:"to,omitempty"`
	Compression        string  `json:"compression,omitempty"`
	CompressionFromURL bool    `json:"compressionFromURL,omitempty"`
	PublicKey          string  `json:"publicKey,omitempty"`
	Warning            string  `json:"warning,omitempty"`
}

// DrvName is a derivation's name without its hash and .drv suffix.
func DrvName(p string) string {
	base := strings.TrimSuffix(path.Base(p), ".drv")
	if i := strings.IndexByte(base, '-'); i == 32 {
		return base[i+1:]
	}
	return base
}

// activityTracker turns Nix's activity messages (from the daemon, or from
// `--log-format internal-json`: the same logging.hh vocabulary) into Events,
// and keeps each derivation's last log lines for a failure report.
type activityTracker struct {
	mu     sync.Mutex
	emit   func(Event)
	builds map[uint64]string // activity id → drv path
	kinds  map[uint64]nixdaemon.ActivityType
	logs   map[string][]string // drv → last lines
	plain  []string            // free log lines (errors), last few
}

const keptLogLines = 25

func newActivityTracker(emit func(Event)) *activityTracker {
	if emit == nil {
		emit = func(Event) {}
	}
	return &activityTracker{emit: emit, builds: map[uint64]string{}, kinds: map[uint64]nixdaemon.ActivityType{}, logs: map[string][]string{}}
}

func keepLast(lines []string, line string, n int) []string {
	lines = append(lines, line)
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

func (t *activityTracker) handle(ev nixdaemon.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch ev.Kind {
	case nixdaemon.EventLog:
		t.plain = keepLast(t.plain, ansi.ReplaceAllString(ev.Text, ""), keptLogLines)
	case nixdaemon.EventStartActivity:
		t.kinds[ev.ActivityID] = ev.Type
		switch ev.Type {
		case nixdaemon.ActBuild:
			if drv, ok := field(ev.Fields, 0); ok {
				t.builds[ev.ActivityID] = drv
				t.emit(Event{Kind: EventBuildStart, Drv: drv, Name: DrvName(drv)})
			}
		case nixdaemon.ActSubstitute:
			if p, ok := field(ev.Fields, 0); ok {
				t.emit(Event{Kind: EventFetch, Name: DrvName(p), OutPath: p})
			}
		}
	case nixdaemon.EventStopActivity:
		if drv, ok := t.builds[ev.ActivityID]; ok {
			t.emit(Event{Kind: EventBuildDone, Drv: drv, Name: DrvName(drv)})
			delete(t.builds, ev.ActivityID)
		}
		delete(t.kinds, ev.ActivityID)
	case nixdaemon.EventResult:
		drv := t.builds[ev.ActivityID]
		switch ev.ResultType {
		case nixdaemon.ResBuildLogLine, nixdaemon.ResPostBuildLogLine:
			if line, ok := field(ev.Fields, 0); ok && drv != "" {
				t.logs[drv] = keepLast(t.logs[drv], line, keptLogLines)
				t.emit(Event{Kind: EventBuildLog, Drv: drv, Name: DrvName(drv), Line: line})
			}
		case nixdaemon.ResSetPhase:
			if phase, ok := field(ev.Fields, 0); ok && drv != "" {
				t.emit(Event{Kind: EventBuildPhase, Drv: drv, Name: DrvName(drv), Phase: phase})
			}
		case nixdaemon.ResProgress:
			if t.kinds[ev.ActivityID] == nixdaemon.ActBuilds && len(ev.Fields) >= 4 {
				n := func(i int) uint64 { v, _ := ev.Fields[i].(uint64); return v }
				t.emit(Event{Kind: EventProgress, Done: n(0), Expected: n(1), Running: n(2), Failed: n(3)})
			}
		}
	}
}

// failureLog returns the last log lines of the derivation a Nix error
// message names, or the free log lines when it names none we saw.
func (t *activityTracker) failureLog(message string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	for drv, lines := range t.logs {
		if strings.Contains(message, drv) {
			return append([]string(nil), lines...)
		}
	}
	for _, line := range t.plain {
		for drv, lines := range t.logs {
			if strings.Contains(line, drv) && strings.Contains(line, "failed") {
				return append([]string(nil), lines...)
			}
		}
	}
	return nil
}

func (t *activityTracker) plainLines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.plain...)
}

func field(fields []any, i int) (string, bool) {
	if i >= len(fields) {
		return "", false
	}
	s, ok := fields[i].(string)
	return s, ok
}
