package closure

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
)

// daemonSocket says where the Nix daemon listens, honouring NIX_REMOTE and
// NIX_DAEMON_SOCKET_PATH as Nix does. ok is false when NIX_REMOTE names
// another kind of store, which only the CLI can reach.
func daemonSocket() (path string, ok bool) {
	remote := os.Getenv("NIX_REMOTE")
	switch {
	case remote == "" || remote == "daemon":
	case strings.HasPrefix(remote, "unix://"):
		return strings.TrimPrefix(remote, "unix://"), true
	default:
		return "", false
	}
	if p := os.Getenv("NIX_DAEMON_SOCKET_PATH"); p != "" {
		return p, true
	}
	return "/nix/var/nix/daemon-socket/socket", true
}

// dialDaemon connects to the daemon, or says why the CLI must do instead:
// a root user on a single-user install has no daemon, and needs none.
func (b *Builder) dialDaemon(ctx context.Context, onEvent nixdaemon.EventFunc) (*nixdaemon.Client, error) {
	socket, ok := daemonSocket()
	if !ok {
		return nil, errNoDaemonClient
	}
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := nixdaemon.Dial(dialCtx, socket, nixdaemon.WithEvents(onEvent))
	if err != nil {
		var ve *nixdaemon.VersionError
		if errors.As(err, &ve) {
			return nil, &NoDaemonError{Detail: err.Error()}
		}
		if os.Geteuid() == 0 && os.Getenv("NIX_REMOTE") == "" {
			b.Log.Debug().Err(err).Msg("no Nix daemon; building with the nix-store CLI")
			return nil, errNoDaemonClient
		}
		return nil, &NoDaemonError{Detail: err.Error()}
	}
	return c, nil
}

var errNoDaemonClient = errors.New("no daemon client")

// spuriousKill is how Nix reports a builder it killed itself after seeing
// its output close a moment before it exited (NixOS/nix#2176). Short
// builders (writeText, buildEnv, runCommand: most of what we build) hit it
// now and then on older Nix; the same build run again succeeds.
var spuriousKill = "failed due to signal 9 (Killed)"

const realiseAttempts = 3

// realise builds drvPath's "out" and roots it at root (an indirect GC root),
// through the daemon when there is one, else through nix-store.
func (b *Builder) realise(ctx context.Context, drvPath, root string) (string, error) {
	var err error
	for attempt := 1; attempt <= realiseAttempts; attempt++ {
		var out string
		out, err = b.realiseOnce(ctx, drvPath, root)
		var be *BuildError
		if err == nil {
			return out, nil
		}
		if !errors.As(err, &be) || !strings.Contains(be.Message+strings.Join(be.Log, "\n"), spuriousKill) {
			return "", err
		}
		b.Log.Warn().Str("error", be.Message).Int("attempt", attempt).Msg("Nix killed a builder (NixOS/nix#2176); retrying")
	}
	return "", err
}

func (b *Builder) realiseOnce(ctx context.Context, drvPath, root string) (string, error) {
	tracker := newActivityTracker(b.emit)
	client, err := b.dialDaemon(ctx, tracker.handle)
	if errors.Is(err, errNoDaemonClient) {
		return b.realiseCLI(ctx, drvPath, root, tracker)
	}
	if err != nil {
		return "", err
	}
	out, err := b.realiseDaemon(ctx, client, drvPath, root, tracker)
	client.Close()
	if errors.Is(err, errNoDaemonClient) {
		return b.realiseCLI(ctx, drvPath, root, tracker)
	}
	return out, err
}

func (b *Builder) realiseDaemon(ctx context.Context, c *nixdaemon.Client, drvPath, root string, tracker *activityTracker) (string, error) {
	target := nixdaemon.DerivationOutputs(drvPath, "out")
	if missing, err := c.QueryMissing(ctx, target); err == nil && len(missing.WillBuild)+len(missing.WillSubstitute) > 0 {
		b.emit(Event{Kind: EventPlan, WillBuild: missing.WillBuild, WillFetch: missing.WillSubstitute,
			Download: missing.DownloadSize, Unpacked: missing.NarSize})
	}
	// The results name the output path, so the .drv need not be parsed here.
	// The daemon's worker holds a temporary root on a derivation's outputs
	// for the connection's life (DerivationGoal adds one), which keeps the
	// collector off the output until the indirect root below exists.
	results, err := c.BuildPathsWithResults(ctx, target)
	var unsupported *nixdaemon.UnsupportedError
	if errors.As(err, &unsupported) {
		return "", errNoDaemonClient // a daemon older than 1.34: the CLI can still do it
	}
	if err != nil {
		return "", daemonBuildError(err, tracker)
	}
	if len(results) != 1 {
		return "", fmt.Errorf("the Nix daemon answered %d build results for one derivation", len(results))
	}
	if err := results[0].Err(); err != nil {
		return "", daemonBuildError(&nixdaemon.DaemonError{Op: "BuildPathsWithResults", Message: results[0].ErrorMsg}, tracker)
	}
	out := results[0].BuiltOutputs["out"]
	if !isStorePath(out) {
		return "", fmt.Errorf("the Nix daemon built %s but named no output path for it", drvPath)
	}
	if err := replaceSymlink(out, root); err != nil {
		return "", fmt.Errorf("creating GC root %s: %w", root, err)
	}
	if err := c.AddIndirectRoot(ctx, root); err != nil {
		return "", daemonBuildError(err, tracker)
	}
	b.emit(Event{Kind: EventDone, OutPath: out})
	return out, nil
}

// daemonBuildError turns a daemon failure into the error a person reads,
// with the failing derivation's last log lines.
func daemonBuildError(err error, tracker *activityTracker) error {
	var de *nixdaemon.DaemonError
	if !errors.As(err, &de) {
		return err
	}
	var lines []string
	for _, msg := range append(tracker.plainLines(), "error: "+ansi.ReplaceAllString(de.Message, "")) {
		lines = append(lines, strings.Split(msg, "\n")...)
	}
	msg := lastError(lines)
	return &BuildError{Message: msg, Log: tracker.failureLog(strings.Join(lines, "\n"))}
}

// replaceSymlink points link at target atomically.
func replaceSymlink(target, link string) error {
	tmp := link + ".tmp-" + fmt.Sprint(os.Getpid())
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// realiseCLI is the fallback for a store without a daemon. Nix's
// internal-json log carries the same activities as the daemon protocol, so
// progress looks the same either way.
func (b *Builder) realiseCLI(ctx context.Context, drvPath, root string, tracker *activityTracker) (string, error) {
	program := "nix-store"
	path, err := exec.LookPath(program)
	if err != nil {
		return "", &NixMissingError{Program: program}
	}
	cmd := exec.CommandContext(ctx, path, "--realise", drvPath, "--add-root", root, "--log-format", "internal-json")
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	scanner := bufio.NewScanner(stderr)
	scanner.Buffer(make([]byte, 64<<10), 4<<20)
	for scanner.Scan() {
		if ev, ok := parseInternalJSON(scanner.Text()); ok {
			tracker.handle(ev)
		}
	}
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		var lines []string
		for _, msg := range tracker.plainLines() {
			lines = append(lines, strings.Split(msg, "\n")...)
		}
		classified := classify(lines, err)
		var be *BuildError
		if errors.As(classified, &be) {
			be.Log = tracker.failureLog(strings.Join(lines, "\n"))
		}
		return "", classified
	}
	out, err := os.Readlink(root)
	if err != nil || !isStorePath(out) {
		return "", &BuildError{Message: "nix-store did not create the GC root " + root}
	}
	b.emit(Event{Kind: EventDone, OutPath: out})
	return out, nil
}

// parseInternalJSON reads one `--log-format internal-json` line.
func parseInternalJSON(line string) (nixdaemon.Event, bool) {
	payload, ok := strings.CutPrefix(line, "@nix ")
	if !ok {
		return nixdaemon.Event{Kind: nixdaemon.EventLog, Text: ansi.ReplaceAllString(line, "")}, true
	}
	var m struct {
		Action string            `json:"action"`
		ID     uint64            `json:"id"`
		Parent uint64            `json:"parent"`
		Type   uint64            `json:"type"`
		Text   string            `json:"text"`
		Msg    string            `json:"msg"`
		Fields []json.RawMessage `json:"fields"`
	}
	if json.Unmarshal([]byte(payload), &m) != nil {
		return nixdaemon.Event{}, false
	}
	var fields []any
	for _, raw := range m.Fields {
		var s string
		var n uint64
		switch {
		case json.Unmarshal(raw, &s) == nil:
			fields = append(fields, s)
		case json.Unmarshal(raw, &n) == nil:
			fields = append(fields, n)
		default:
			fields = append(fields, string(raw))
		}
	}
	switch m.Action {
	case "msg":
		return nixdaemon.Event{Kind: nixdaemon.EventLog, Text: ansi.ReplaceAllString(m.Msg, "")}, true
	case "start":
		return nixdaemon.Event{Kind: nixdaemon.EventStartActivity, ActivityID: m.ID, Parent: m.Parent,
			Type: nixdaemon.ActivityType(m.Type), Text: m.Text, Fields: fields}, true
	case "stop":
		return nixdaemon.Event{Kind: nixdaemon.EventStopActivity, ActivityID: m.ID}, true
	case "result":
		return nixdaemon.Event{Kind: nixdaemon.EventResult, ActivityID: m.ID,
			ResultType: nixdaemon.ResultType(m.Type), Fields: fields}, true
	}
	return nixdaemon.Event{}, false
}
