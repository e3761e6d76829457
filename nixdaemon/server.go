package nixdaemon

import (
	"io"
)

// The daemon's side of the stderr channel, as daemon.cc's TunnelLogger
// writes it: a server (the gateway) uses these to answer a client itself.

// MinClientVersion is the oldest client a server here accepts: the same
// 1.21 as MinDaemonVersion, so that one set of formats serves both sides.
const MinClientVersion = MinDaemonVersion

// appendStderrError encodes STDERR_ERROR the way TunnelLogger::stopWork
// does for a client of version v: from 1.26 the structured Error of
// serialise.cc ("Error", level, "Error", message, havePos 0, no traces),
// before that the message and an exit status.
func appendStderrError(q *request, v ProtocolVersion, msg string) *request {
	q.u64(stderrError)
	if v.Minor() >= verStructuredErrors {
		return q.str("Error").u64(uint64(VerbosityError)).str("Error").str(msg).u64(0).u64(0)
	}
	return q.str(msg).u64(1)
}

// WriteStderrError sends msg as the error of the current operation: the
// client's RemoteStore throws it, and the nix command prints "error: msg".
func WriteStderrError(w io.Writer, v ProtocolVersion, msg string) error {
	_, err := w.Write(appendStderrError(new(request), v, msg).Bytes())
	return err
}

// WriteStderrLog sends one log line (STDERR_NEXT); the client prints it.
func WriteStderrLog(w io.Writer, line string) error {
	_, err := w.Write(new(request).u64(stderrNext).str(line + "\n").Bytes())
	return err
}

// WriteStderrLast ends the stderr part of an operation (STDERR_LAST);
// the reply follows.
func WriteStderrLast(w io.Writer) error {
	_, err := w.Write(new(request).u64(stderrLast).Bytes())
	return err
}
