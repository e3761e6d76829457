package vm

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/internal/sockpath"
	"github.com/claude-sandbox/claude-sandbox/internal/tty"
	"github.com/claude-sandbox/claude-sandbox/launch"
)

type consolePhase int

const (
	phaseBooting consolePhase = iota // before the start marker: boot output
	phaseRunning                     // the command's terminal
	phaseEnded                       // after the end marker: shutdown output
)

// maxTypeAhead bounds input queued before the command starts.
const maxTypeAhead = 1 << 20

// readChunks reads r in the background until EOF or an error.
func readChunks(r io.Reader) <-chan []byte {
	ch := make(chan []byte, 16)
	go func() {
		defer close(ch)
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				ch <- append([]byte(nil), buf[:n]...)
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// supervise relays the console until the guest reports the command's end
// and powers off, and turns what happened into this process's result.
func (sv *vmSupervisor) supervise(ctx context.Context) error {
	p, t := sv.plan, sv.term
	errTTY := tty.IsTerminal(int(sv.stderr.Fd()))
	accel := "KVM"
	if p.Accel == launch.AccelTCG {
		accel = "TCG emulation, no KVM: slow"
	}
	vmStatusLine(sv.stderr, errTTY, "claude-sandbox: booting the VM ("+accel+")…")

	out := readChunks(sv.consoleOut)
	in := t.stdinChunks()
	t.raw()
	defer t.restore()

	sc := newMarkerScanner(sv.nonce)
	phase, status := phaseBooting, -1
	var pending [][]byte
	pendingSize, inEOF := 0, false
	progress := p.Accel != launch.AccelKVM
	var watchdog, afterExitC <-chan time.Time
	if !progress {
		timer := time.NewTimer(bootWatchdog)
		defer timer.Stop()
		watchdog = timer.C
	}
	var window []byte // recent boot output, for the progress check across chunks

	write := func(b []byte) {
		switch phase {
		case phaseBooting, phaseEnded:
			_, _ = sv.bootLog.Write(b)
			if !progress {
				window = append(window, b...)
				if kernelProgress.Match(window) {
					progress, watchdog = true, nil
				}
				if len(window) > 64 {
					window = append(window[:0], window[len(window)-64:]...)
				}
			}
		case phaseRunning:
			_, _ = t.out.Write(b)
		}
	}
	mark := func(tag string) {
		switch {
		case tag == "up" && phase == phaseBooting:
			phase, progress, watchdog = phaseRunning, true, nil
			vmStatusLine(sv.stderr, errTTY, "")
			for _, b := range pending {
				_ = writeAll(sv.qemuIn, b)
			}
			pending = nil
			if inEOF && !t.isTTY {
				_ = writeAll(sv.qemuIn, eof)
			}
		case phase == phaseRunning:
			if n, ok := exitStatus(tag); ok {
				status, phase = n, phaseEnded
				afterExitC = time.After(afterExit)
			}
		}
	}

	for {
		select {
		case b, ok := <-out:
			if !ok {
				out = nil
				continue
			}
			sc.feed(b, write, mark)
		case b, ok := <-in:
			if !ok {
				in, inEOF = nil, true
				if phase == phaseRunning && !t.isTTY {
					_ = writeAll(sv.qemuIn, eof)
				}
				continue
			}
			switch phase {
			case phaseBooting:
				if t.isTTY && bytes.IndexByte(b, 0x03) >= 0 {
					// Ctrl-C while booting: the user gives up.
					t.restore()
					vmStatusLine(sv.stderr, errTTY, "")
					sv.quit()
					return context.Canceled
				}
				if pendingSize+len(b) <= maxTypeAhead {
					pending, pendingSize = append(pending, b), pendingSize+len(b)
				}
			case phaseRunning:
				_ = writeAll(sv.qemuIn, b)
			}
		case err := <-sv.exited:
			sv.exited <- err
			// The console pipe may still hold the last output.
			for drained := false; out != nil && !drained; {
				select {
				case b, ok := <-out:
					if !ok {
						out = nil
						break
					}
					sc.feed(b, write, mark)
				case <-time.After(time.Second):
					drained = true
				}
			}
			t.restore()
			vmStatusLine(sv.stderr, errTTY, "")
			return sv.result(err, phase, status)
		case <-watchdog:
			sv.kill()
			t.restore()
			vmStatusLine(sv.stderr, errTTY, "")
			sv.keepBootLog()
			return &launch.NoKVMError{Reason: fmt.Sprintf("the guest made no progress in %s under KVM", bootWatchdog), Auto: p.AutoKVM}
		case <-afterExitC:
			afterExitC = nil
			sv.quit()
		case <-ctx.Done():
			t.restore()
			vmStatusLine(sv.stderr, errTTY, "")
			sv.powerdown(stopGrace)
			if status >= 0 {
				return launch.StatusError(status)
			}
			return ctx.Err()
		}
	}
}

// result turns how QEMU ended into the launch's result.
func (sv *vmSupervisor) result(waitErr error, phase consolePhase, status int) error {
	p := sv.plan
	switch phase {
	case phaseEnded:
		return launch.StatusError(status)
	case phaseRunning:
		if sig := proc.SignalOf(waitErr); sig != 0 {
			fmt.Fprintf(sv.stderr, "claude-sandbox: QEMU was killed (signal %d) before the command finished\n", sig)
			return &launch.ExitStatusError{Code: 128 + sig}
		}
		fmt.Fprintln(sv.stderr, "claude-sandbox: the VM powered off before the command finished")
		return &launch.ExitStatusError{Code: 128 + int(syscall.SIGTERM)}
	}
	kept := sv.keepBootLog()
	qemuSays := lastLines(filepath.Join(p.RunDir, vmQEMULog), 2)
	if p.Accel == launch.AccelKVM {
		low := strings.ToLower(qemuSays)
		if strings.Contains(low, "kvm") || strings.Contains(low, "msr") {
			return &launch.NoKVMError{Reason: "QEMU: " + firstLine(qemuSays), Auto: p.AutoKVM}
		}
	}
	if sig := proc.SignalOf(waitErr); sig != 0 {
		return &launch.VMStartError{Reason: fmt.Sprintf("QEMU was killed (signal %d) while the guest booted", sig), Log: kept}
	}
	if qemuSays != "" {
		return &launch.VMStartError{Reason: "QEMU: " + strings.ReplaceAll(qemuSays, "\n", "; "), Log: kept}
	}
	reason := "the guest stopped before the command started"
	if last := lastLines(kept, 1); last != "" {
		reason += " (last console line: " + strings.Map(printable, last) + ")"
	}
	return &launch.VMStartError{Reason: reason, Log: kept}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func printable(r rune) rune {
	if r < 0x20 || r == 0x7f {
		return -1
	}
	return r
}

// keepBootLog copies the boot log out of the run directory (removed at the
// end) so the error can point at it; returns its path or "".
func (sv *vmSupervisor) keepBootLog() string {
	data, err := os.ReadFile(filepath.Join(sv.plan.RunDir, vmBootLog))
	if err != nil {
		return ""
	}
	kept := filepath.Join(sv.plan.StateDir, "vm-boot.log")
	if err := os.WriteFile(kept, data, 0o600); err != nil {
		return ""
	}
	return kept
}

// enterLine is the length of one base64 line of an enter request: well
// within the guest terminal's line buffer (4095 bytes in canonical mode).
const enterLine = 3000

// maxEnterCommand bounds the command `enter` sends (Claude Code's arguments
// with the system-prompt notice fit many times over).
const maxEnterCommand = 256 << 10

// Enter runs argv on the VM's second console. The guest agent there waits
// for one request, runs the command as the sandbox user in the project,
// and frames it with markers like the main console.
func (Backend) Enter(ctx context.Context, rec *launch.Record, _ *launch.Runtime, argv []string) error {
	runDir, err := vmRunDir(rec)
	if err != nil {
		return err
	}
	run, err := readRun(filepath.Join(runDir, vmMetaDir))
	if err != nil || run["nonce"] == "" {
		return fmt.Errorf("reading the VM's metadata: %v", err)
	}
	lock, err := os.OpenFile(filepath.Join(runDir, "enter.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return &launch.EnterBusyError{}
	}
	t := openTerminal(os.Stdin, os.Stdout)
	var b64 string
	if len(argv) > 0 {
		enc, err := encodeNUL(argv)
		if err != nil {
			return err
		}
		if len(enc) > maxEnterCommand {
			return &launch.OptionError{Flag: "enter", Value: "(command)", Want: fmt.Sprintf("a command of at most %d KiB", maxEnterCommand>>10)}
		}
		b64 = base64.StdEncoding.EncodeToString(enc)
	}
	var chunks []string
	for len(b64) > 0 {
		n := min(enterLine, len(b64))
		chunks = append(chunks, b64[:n])
		b64 = b64[n:]
	}
	req := fmt.Sprintf("claude-sandbox-enter %d %d %t %t %d\n", t.rows, t.cols, t.isTTY, t.outTTY, len(chunks))
	for _, c := range chunks {
		req += c + "\n"
	}
	addr, dir, err := sockpath.Short(rec.Console)
	if err != nil {
		return err
	}
	conn, err := net.DialTimeout("unix", addr, 5*time.Second)
	dir.Close()
	if err != nil {
		return fmt.Errorf("connecting to the VM's console: %w", err)
	}
	defer conn.Close()
	return relaySession(ctx, conn, t, run["nonce"], req, os.Stderr)
}

// enterWait bounds the wait for the guest's second console (a VM still
// booting under emulation can take a minute).
var enterWait = 3 * time.Minute

// relaySession relays an enter session until its end marker. The request
// goes out when the guest agent says "ready": only then is the guest
// terminal open to receive it.
func relaySession(ctx context.Context, conn net.Conn, t *terminal, nonce, req string, stderr *os.File) error {
	errTTY := tty.IsTerminal(int(stderr.Fd()))
	vmStatusLine(stderr, errTTY, "claude-sandbox: waiting for the VM's console…")
	out := readChunks(conn)
	in := t.stdinChunks()
	t.raw()
	defer t.restore()
	sc := newMarkerScanner(nonce)
	phase, status := phaseBooting, -1
	inEOF, sent := false, false
	var pending [][]byte
	var werr error
	write := func(b []byte) {
		if phase == phaseRunning {
			_, _ = t.out.Write(b)
		}
	}
	mark := func(tag string) {
		switch {
		case tag == "ready" && phase == phaseBooting && !sent:
			sent = true
			_, werr = io.WriteString(conn, req)
		case tag == "enter" && phase == phaseBooting:
			phase = phaseRunning
			vmStatusLine(stderr, errTTY, "")
			for _, b := range pending {
				_ = writeAll(conn, b)
			}
			if inEOF && !t.isTTY {
				_ = writeAll(conn, eof)
			}
		case phase == phaseRunning:
			if n, ok := exitStatus(tag); ok {
				status, phase = n, phaseEnded
			}
		}
	}
	timeout := time.NewTimer(enterWait)
	defer timeout.Stop()
	for phase != phaseEnded {
		if werr != nil {
			return fmt.Errorf("writing to the VM's console: %w", werr)
		}
		select {
		case <-timeout.C:
			if phase == phaseBooting {
				t.restore()
				vmStatusLine(stderr, errTTY, "")
				return launch.NewVMStartError(fmt.Sprintf("the VM's second console did not answer within %s", enterWait), "is the guest still booting? try again, or look at `claude-sandbox ps`")
			}
		case b, ok := <-out:
			if !ok {
				t.restore()
				vmStatusLine(stderr, errTTY, "")
				return errors.New("the VM closed its console (did it stop?)")
			}
			sc.feed(b, write, mark)
		case b, ok := <-in:
			if !ok {
				in, inEOF = nil, true
				if phase == phaseRunning && !t.isTTY {
					_ = writeAll(conn, eof)
				}
				continue
			}
			if phase == phaseRunning {
				_ = writeAll(conn, b)
			} else if t.isTTY && bytes.IndexByte(b, 0x03) >= 0 {
				return context.Canceled
			} else {
				pending = append(pending, b)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return launch.StatusError(status)
}
