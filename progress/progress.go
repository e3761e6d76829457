// Package progress shows a build to a person or a program: a live bar on a
// terminal, plain stable lines in a pipe or CI, one JSON object per event
// with --log-format json. It only renders closure.Events; it decides nothing
// about building.
package progress

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/claude-sandbox/claude-sandbox/closure"
)

// Mode chooses the rendering.
type Mode int

const (
	Plain    Mode = iota // stable lines: pipes, CI, log files
	Terminal             // a live bar
	JSON                 // one event per line
)

// Renderer turns events into output. Handle is safe for concurrent use.
type Renderer struct {
	mu      sync.Mutex
	w       io.Writer
	mode    Mode
	verbose bool // show build log lines too
	enc     *json.Encoder
	bars    *mpb.Progress
	bar     *mpb.Bar
	label   atomic.Value // string: running derivations and phases, shown after the bar
	planned int
	started int
	done    int
	// built names the derivations finished since the first plan: a build
	// Nix killed is planned again when it is retried, and counted once.
	built   map[string]bool
	current map[string]string // drv name → phase
	toPush  uint64            // paths the cache lacks (push-plan)
	inPush  uint64            // paths in the pushed closures (push-start)
}

// New returns a renderer writing to w.
func New(w io.Writer, mode Mode, verbose bool) *Renderer {
	r := &Renderer{w: w, mode: mode, verbose: verbose, current: map[string]string{}, built: map[string]bool{}}
	if mode == JSON {
		r.enc = json.NewEncoder(w)
	}
	return r
}

// Handle renders one event.
func (r *Renderer) Handle(ev closure.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mode == JSON {
		if ev.Kind != closure.EventBuildLog || r.verbose {
			_ = r.enc.Encode(ev)
		}
		return
	}
	switch ev.Kind {
	case closure.EventEvaluating:
		r.line("evaluating the sandbox configuration")
	case closure.EventPlan:
		for _, d := range ev.WillBuild {
			delete(r.built, closure.DrvName(d))
		}
		r.done = len(r.built)
		r.started = r.done
		r.planned = r.done + len(ev.WillBuild)
		r.line(planSummary(ev))
		if r.bar != nil {
			// A retry's plan: the same bar, its total and count corrected.
			r.bar.SetTotal(int64(r.planned), false)
			r.bar.SetCurrent(int64(r.done))
		} else if r.mode == Terminal && r.planned > 0 {
			r.bars = mpb.New(mpb.WithOutput(r.w), mpb.WithWidth(24))
			r.bar = r.bars.AddBar(int64(r.planned),
				mpb.PrependDecorators(decor.Name("building "), decor.CountersNoUnit("%d/%d")),
				mpb.AppendDecorators(decor.Elapsed(decor.ET_STYLE_GO, decor.WCSyncSpace), decor.Any(func(decor.Statistics) string {
					// No lock: mpb calls this while Handle may hold r.mu and wait on mpb.
					label, _ := r.label.Load().(string)
					return " " + label
				})),
			)
		}
	case closure.EventBuildStart:
		r.started++
		r.current[ev.Name] = ""
		if r.mode == Plain {
			r.line(fmt.Sprintf("building %s (%d/%s)", ev.Name, r.started, r.total()))
		}
		r.describe()
	case closure.EventBuildPhase:
		r.current[ev.Name] = ev.Phase
		r.describe()
	case closure.EventBuildLog:
		if r.verbose {
			r.line(ev.Name + "> " + ev.Line)
		}
	case closure.EventBuildDone:
		delete(r.current, ev.Name)
		r.built[ev.Name] = true
		r.done = len(r.built)
		if r.bar != nil {
			r.bar.SetCurrent(int64(r.done))
		}
		if r.mode == Plain {
			r.line(fmt.Sprintf("finished %s (%d/%s)", ev.Name, r.done, r.total()))
		}
		r.describe()
	case closure.EventFetch:
		r.line("fetching " + ev.Name)
	case closure.EventPushStart:
		r.inPush = ev.Expected
		r.line(fmt.Sprintf("pushing %d path%s (%s) to %s%s", ev.Expected, plural(int(ev.Expected)), mib(ev.Bytes), ev.To, compressionNote(ev)))
		switch {
		case ev.PublicKey != "":
			name, _, _ := strings.Cut(ev.PublicKey, ":")
			r.line(fmt.Sprintf("signing with key %s; consumers trust it with: extra-trusted-public-keys = %s", name, ev.PublicKey))
		case ev.Warning != "":
			r.line("warning: " + ev.Warning)
		}
	case closure.EventPushPlan:
		r.toPush = ev.Expected
		switch {
		case ev.Expected == 0:
			r.line("the cache has every path already")
		case ev.Expected < r.inPush:
			r.line(fmt.Sprintf("the cache has %d of them already", r.inPush-ev.Expected))
		}
	case closure.EventPushPath:
		r.line(fmt.Sprintf("pushed %s (%d/%d, %s)", ev.Name, ev.Done, r.toPush, mib(ev.Bytes)))
	case closure.EventPushDone:
		r.line(fmt.Sprintf("pushed %d path%s (%s) to %s in %.1f s", ev.Done, plural(int(ev.Done)), mib(ev.Bytes), ev.To, ev.Seconds))
	case closure.EventDone:
		r.stopBars()
		if r.done > 0 {
			r.line(fmt.Sprintf("built %d derivation%s", r.done, plural(r.done)))
		}
	}
}

func (r *Renderer) total() string {
	if r.planned == 0 {
		return "?"
	}
	return fmt.Sprint(r.planned)
}

// Close stops the live display (a failed build never sends EventDone).
// Call it before anything else writes to the terminal.
func (r *Renderer) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopBars()
}

func (r *Renderer) stopBars() {
	if r.bars == nil {
		return
	}
	bars, bar := r.bars, r.bar
	r.bars, r.bar = nil, nil
	if bar.Current() < int64(r.planned) {
		bar.Abort(false) // a failure, or derivations Nix did not have to build after all
	}
	bars.Wait()
}

// describe puts the running builds and their phases in the bar's label.
func (r *Renderer) describe() {
	if r.bar == nil {
		return
	}
	var names []string
	for name, phase := range r.current {
		if phase != "" {
			name += " (" + phase + ")"
		}
		names = append(names, name)
	}
	sort.Strings(names)
	label := strings.Join(names, ", ")
	if len(label) > 60 {
		label = label[:57] + "..."
	}
	r.label.Store(label)
}

// line prints a whole line, above the bar when there is one.
func (r *Renderer) line(s string) {
	if r.bars != nil {
		_, _ = r.bars.Write([]byte(s + "\n"))
		return
	}
	fmt.Fprintln(r.w, s)
}

func planSummary(ev closure.Event) string {
	var parts []string
	if n := len(ev.WillBuild); n > 0 {
		names := make([]string, 0, n)
		for _, d := range ev.WillBuild {
			names = append(names, closure.DrvName(d))
		}
		sort.Strings(names)
		shown := names
		if len(shown) > 8 {
			shown = append(shown[:8:8], fmt.Sprintf("and %d more", n-8))
		}
		parts = append(parts, fmt.Sprintf("%d derivation%s to build: %s", n, plural(n), strings.Join(shown, ", ")))
	}
	if n := len(ev.WillFetch); n > 0 {
		parts = append(parts, fmt.Sprintf("%d path%s to fetch (%.1f MiB download, %.1f MiB unpacked)", n, plural(n),
			float64(ev.Download)/(1<<20), float64(ev.Unpacked)/(1<<20)))
	}
	if len(parts) == 0 {
		return "nothing to build: every path is in the store"
	}
	return strings.Join(parts, "; ")
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func compressionNote(ev closure.Event) string {
	switch {
	case ev.Compression == "":
		return "" // a Nix store, not a binary cache: nothing is compressed
	case ev.CompressionFromURL:
		return fmt.Sprintf(", compressed with %s (the URL's choice)", ev.Compression)
	}
	return fmt.Sprintf(", compressed with %s (compression= in the URL chooses another)", ev.Compression)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
