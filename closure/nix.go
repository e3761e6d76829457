package closure

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/claude-sandbox/claude-sandbox/internal/lazyregexp"
)

// nixRunner runs Nix CLI programs with a log tap and sane cancellation.
type nixRunner struct {
	log zerolog.Logger
	// Progress receives Nix's stderr as it comes (nil: only kept for errors).
	progress io.Writer
}

const logTail = 40

type nixResult struct {
	stdout string
	tail   []string // last stderr lines, ANSI stripped
}

var ansi = lazyregexp.New(`\x1b\[[0-9;]*[A-Za-z]`)

func (r nixRunner) run(ctx context.Context, program string, args ...string) (nixResult, error) {
	path, err := exec.LookPath(program)
	if err != nil {
		return nixResult{}, &NixMissingError{Program: program}
	}
	cmd := exec.CommandContext(ctx, path, args...)
	// Interrupt first so Nix can release its locks; kill only if it ignores us.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	// A Nix child outliving a killed claude-sandbox would keep building for nobody.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nixResult{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nixResult{}, err
	}
	var tail []string
	scanner := bufio.NewScanner(stderr)
	scanner.Buffer(make([]byte, 64<<10), 1<<20)
	for scanner.Scan() {
		line := ansi.ReplaceAllString(scanner.Text(), "")
		if r.progress != nil {
			io.WriteString(r.progress, line+"\n")
		}
		tail = append(tail, line)
		if len(tail) > logTail {
			tail = tail[1:]
		}
	}
	err = cmd.Wait()
	r.log.Debug().Str("program", program).Strs("args", args).Int("pid", cmd.Process.Pid).
		Dur("took", time.Since(start)).Int("exit", cmd.ProcessState.ExitCode()).Msg("nix")
	res := nixResult{stdout: strings.TrimSpace(stdout.String()), tail: tail}
	if err != nil {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		return res, classify(res.tail, err)
	}
	return res, nil
}

var daemonFailure = lazyregexp.New(`cannot connect to socket at '[^']*'|cannot connect to daemon|daemon-socket/socket': Permission denied|Nix daemon disconnected`)

// classify turns a failed Nix run into a typed error; the caller adds context.
func classify(tail []string, err error) error {
	joined := strings.Join(tail, "\n")
	if m := daemonFailure.FindString(joined); m != "" {
		return &NoDaemonError{Detail: lastError(tail)}
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return &BuildError{Message: lastError(tail), Log: tail}
	}
	return err
}

// lastError picks the line a person should read: the failing builder if
// one failed (Nix's last line then only counts failed dependencies), else
// the last "error:" line.
func lastError(tail []string) string {
	for _, line := range tail {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "error: builder for "); ok {
			return strings.TrimSuffix("builder for "+rest, ";")
		}
	}
	for i := len(tail) - 1; i >= 0; i-- {
		line := strings.TrimSpace(tail[i])
		if rest, ok := strings.CutPrefix(line, "error:"); ok && strings.TrimSpace(rest) != "" {
			return strings.TrimSpace(rest)
		}
	}
	for i := len(tail) - 1; i >= 0; i-- {
		if line := strings.TrimSpace(tail[i]); line != "" {
			return line
		}
	}
	return "Nix failed without a message"
}
