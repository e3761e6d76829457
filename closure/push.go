package closure

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
	"github.com/claude-sandbox/claude-sandbox/nixdaemon"
)

// PushResult is what a push did.
type PushResult struct {
	PushTarget
	Closures     int     `json:"closures"`     // out paths asked for
	Paths        int     `json:"paths"`        // paths in their closures, each counted once
	ClosureBytes uint64  `json:"closureBytes"` // their NAR bytes
	Pushed       int     `json:"pushed"`       // paths the cache did not have yet
	Bytes        uint64  `json:"bytes"`        // their NAR bytes (before compression)
	Seconds      float64 `json:"seconds"`
	Signed       bool    `json:"signed"`
}

// Push copies the closures of outPaths to a binary cache in one `nix copy`
// (the daemon protocol has no upload of a closure to another store), so a
// path the closures share is sent once and paths already in the cache not
// at all. Progress arrives as push events.
func (b *Builder) Push(ctx context.Context, t PushTarget, outPaths ...string) (PushResult, error) {
	start := time.Now()
	res := PushResult{PushTarget: t, Closures: len(outPaths), Signed: t.Signed()}
	sizes, err := b.closureSizes(ctx, outPaths...)
	if err != nil {
		return res, err
	}
	res.Paths = len(sizes)
	for _, n := range sizes {
		res.ClosureBytes += n
	}
	b.emit(Event{Kind: EventPushStart, To: t.Shown, Compression: t.Compression, CompressionFromURL: t.CompressionFromURL,
		PublicKey: t.PublicKey, Warning: t.UnsignedWarning(), Expected: uint64(res.Paths), Bytes: res.ClosureBytes})

	path, err := exec.LookPath("nix")
	if err != nil {
		return res, &NixMissingError{Program: "nix"}
	}
	args := append([]string{"--extra-experimental-features", "nix-command", "copy", "--log-format", "internal-json", "--to", t.URL}, outPaths...)
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return res, err
	}
	if err := cmd.Start(); err != nil {
		return res, err
	}
	copying := map[uint64]string{} // actCopyPath activity → store path
	var plain []string
	scanner := bufio.NewScanner(stderr)
	scanner.Buffer(make([]byte, 64<<10), 4<<20)
	for scanner.Scan() {
		if b.Progress != nil {
			b.Progress.Write([]byte(scanner.Text() + "\n"))
		}
		ev, ok := parseInternalJSON(scanner.Text())
		if !ok {
			continue
		}
		switch ev.Kind {
		case nixdaemon.EventLog:
			plain = keepLast(plain, ev.Text, keptLogLines)
		case nixdaemon.EventStartActivity:
			switch ev.Type {
			case nixdaemon.ActCopyPaths:
				// "copying %d paths" (copyPaths in store-api.cc, 2.8 and 2.26 alike):
				// the paths the cache lacks. The activity has no fields.
				if m := copyingCount.FindStringSubmatch(ev.Text); m != nil {
					n, _ := strconv.Atoi(m[1])
					b.emit(Event{Kind: EventPushPlan, Expected: uint64(n), To: t.Shown})
				}
			case nixdaemon.ActCopyPath:
				if p, ok := field(ev.Fields, 0); ok {
					copying[ev.ActivityID] = p
				}
			}
		case nixdaemon.EventStopActivity:
			if p, ok := copying[ev.ActivityID]; ok {
				delete(copying, ev.ActivityID)
				res.Pushed++
				res.Bytes += sizes[p]
				b.emit(Event{Kind: EventPushPath, Name: DrvName(p), OutPath: p, Done: uint64(res.Pushed), Bytes: res.Bytes})
			}
		}
	}
	err = cmd.Wait()
	res.Seconds = time.Since(start).Seconds()
	b.Log.Debug().Strs("args", args).Dur("took", time.Since(start)).Msg("nix copy")
	if err != nil {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		var lines []string
		for _, msg := range plain {
			lines = append(lines, strings.Split(msg, "\n")...)
		}
		err = classify(lines, err)
		var be *BuildError
		if errors.As(err, &be) {
			be.Stage = "push"
		}
		return res, err
	}
	b.emit(Event{Kind: EventPushDone, To: t.Shown, Done: uint64(res.Pushed), Bytes: res.Bytes, Seconds: res.Seconds})
	return res, nil
}

var copyingCount = lazyregexp.New(`^copying (\d+) paths`)

// closureSizes maps every path the out paths need at run time to its NAR
// size.
func (b *Builder) closureSizes(ctx context.Context, outPaths ...string) (map[string]uint64, error) {
	client, err := b.dialDaemon(ctx, nil)
	if errors.Is(err, errNoDaemonClient) {
		return b.closureSizesCLI(ctx, outPaths...)
	}
	if err != nil {
		return nil, err
	}
	defer client.Close()
	sizes := map[string]uint64{}
	seen := map[string]bool{}
	queue := []string{}
	for _, p := range outPaths {
		if !seen[p] {
			seen[p] = true
			queue = append(queue, p)
		}
	}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		info, err := client.QueryPathInfo(ctx, p)
		if err != nil {
			return nil, err
		}
		sizes[p] = info.NarSize
		for _, ref := range info.References {
			if !seen[ref] {
				seen[ref] = true
				queue = append(queue, ref)
			}
		}
	}
	return sizes, nil
}

func (b *Builder) closureSizesCLI(ctx context.Context, outPaths ...string) (map[string]uint64, error) {
	req, err := b.runner().run(ctx, "nix-store", append([]string{"--query", "--requisites"}, outPaths...)...)
	if err != nil {
		return nil, err
	}
	paths := strings.Fields(req.stdout)
	out, err := b.runner().run(ctx, "nix-store", append([]string{"--query", "--size"}, paths...)...)
	if err != nil {
		return nil, err
	}
	sizes := map[string]uint64{}
	for i, s := range strings.Fields(out.stdout) {
		if i < len(paths) {
			sizes[paths[i]], _ = strconv.ParseUint(s, 10, 64)
		}
	}
	return sizes, nil
}
