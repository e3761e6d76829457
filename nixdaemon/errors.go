package nixdaemon

import (
	"errors"
	"fmt"
	"strings"
)

// ErrClosed is returned by calls on a Client that was closed, or that
// closed itself after a failure that left the conversation out of step
// (I/O error, protocol error, cancelled context).
var ErrClosed = errors.New("nixdaemon: connection closed")

// ErrInvalidPath is returned (wrapped) by QueryPathInfo for a path that is
// not valid in the store.
var ErrInvalidPath = errors.New("nixdaemon: path is not valid")

// DaemonError is an error the daemon reported for one operation
// (STDERR_ERROR). The connection stays usable.
type DaemonError struct {
	Op string // operation that failed, e.g. "BuildPaths"
	// Message is the daemon's message as sent, which may contain ANSI
	// colour codes; Error() strips them.
	Message string
	Level   Verbosity // from the structured format (≥ 1.26); VerbosityError before
	Status  uint64    // exit status, only sent by daemons older than 1.26
	Traces  []string  // trace hints, outermost last (≥ 1.26)
}

func (e *DaemonError) Error() string {
	msg := strings.TrimSpace(StripANSI(e.Message))
	if e.Op == "" {
		return "nix daemon: " + msg
	}
	return "nix daemon: " + e.Op + ": " + msg
}

// ProtocolError means the daemon sent something this client cannot parse
// or does not allow (bad magic, an oversized length, an unknown message
// type, a malformed field). The connection is closed afterwards.
type ProtocolError struct {
	Op  string // operation in progress ("handshake" during Dial)
	Msg string
	Err error // underlying cause, if any
}

func (e *ProtocolError) Error() string {
	s := "nixdaemon: protocol error"
	if e.Op != "" {
		s += " in " + e.Op
	}
	s += ": " + e.Msg
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *ProtocolError) Unwrap() error { return e.Err }

// VersionError is returned by Dial when the daemon speaks a protocol this
// client does not support (a different major version, or older than
// MinDaemonVersion).
type VersionError struct {
	Daemon ProtocolVersion // what the daemon offered
	Min    ProtocolVersion // MinDaemonVersion
}

func (e *VersionError) Error() string {
	if e.Daemon.Major() != 1 {
		return fmt.Sprintf("nixdaemon: daemon speaks worker protocol %s; only major version 1 is supported", e.Daemon)
	}
	return fmt.Sprintf("nixdaemon: daemon speaks worker protocol %s, older than the minimum %s; upgrade the Nix daemon", e.Daemon, e.Min)
}

// UnsupportedError is returned by an operation the negotiated protocol
// version does not have (for example BuildPathsWithResults before 1.34).
type UnsupportedError struct {
	Op      string
	Need    ProtocolVersion
	Version ProtocolVersion
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("nixdaemon: %s needs worker protocol %s, daemon negotiated %s", e.Op, e.Need, e.Version)
}

func protoErr(op, format string, args ...any) error {
	return &ProtocolError{Op: op, Msg: fmt.Sprintf(format, args...)}
}

// StripANSI removes the ANSI escape sequences (colours, bold) that Nix puts
// in its messages, for logs and pipes.
func StripANSI(s string) string {
	if !strings.Contains(s, "\x1b") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != 0x1b {
			b.WriteByte(s[i])
			continue
		}
		// ESC [ parameters… final byte (0x40–0x7e); a lone ESC is dropped.
		if i+1 < len(s) && s[i+1] == '[' {
			j := i + 2
			for j < len(s) && (s[j] < 0x40 || s[j] > 0x7e) {
				j++
			}
			i = j
		}
	}
	return b.String()
}
