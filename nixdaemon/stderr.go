package nixdaemon

import (
	"fmt"
	"strings"
)

// EventKind says which stderr message an Event came from.
type EventKind uint8

const (
	// EventLog is a plain log line (STDERR_NEXT): Text, without its
	// trailing newline.
	EventLog EventKind = iota + 1
	// EventStartActivity opens an activity (STDERR_START_ACTIVITY):
	// ActivityID, Level, Type, Text, Fields, Parent.
	EventStartActivity
	// EventStopActivity closes one (STDERR_STOP_ACTIVITY): ActivityID.
	EventStopActivity
	// EventResult reports progress of an activity (STDERR_RESULT):
	// ActivityID, ResultType, Fields.
	EventResult
	// EventWrite carries data the daemon sent for a sink (STDERR_WRITE):
	// Text. None of this package's operations expect one.
	EventWrite
)

func (k EventKind) String() string {
	switch k {
	case EventLog:
		return "log"
	case EventStartActivity:
		return "start-activity"
	case EventStopActivity:
		return "stop-activity"
	case EventResult:
		return "result"
	case EventWrite:
		return "write"
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// Event is one message from the daemon's stderr channel, which precedes
// every reply. Which fields are set depends on Kind.
type Event struct {
	Kind       EventKind
	ActivityID uint64       // start, stop, result
	Parent     uint64       // start: the enclosing activity, 0 for none
	Level      Verbosity    // start
	Type       ActivityType // start
	ResultType ResultType   // result
	Text       string       // log, start (may be empty), write
	// Fields of a start or result: each element is a uint64 or a string,
	// in the order logging.hh documents per activity and result type.
	Fields []any
}

// EventFunc receives events. It runs on the goroutine making the call,
// while the daemon waits: it should be quick, and must not call the Client.
type EventFunc func(Event)

// readStderr consumes stderr messages until STDERR_LAST (returns nil) or
// STDERR_ERROR (returns a *DaemonError). Anything else it cannot parse is
// an I/O error or a *ProtocolError, after which the stream is out of step.
func readStderr(r *reader, v ProtocolVersion, onEvent EventFunc) error {
	for {
		r.reset(r.op)
		msg, err := r.uint64("stderr message type")
		if err != nil {
			return err
		}
		var ev Event
		switch msg {
		case stderrLast:
			return nil

		case stderrError:
			return readDaemonError(r, v)

		case stderrNext:
			s, err := r.string("log message", maxLogLen)
			if err != nil {
				return err
			}
			ev = Event{Kind: EventLog, Text: strings.TrimSuffix(s, "\n")}

		case stderrWrite:
			s, err := r.string("write data", maxLogLen)
			if err != nil {
				return err
			}
			ev = Event{Kind: EventWrite, Text: s}

		case stderrRead:
			// The daemon wants data from us (an import); no operation
			// here sends any, and the daemon now waits for it.
			return protoErr(r.op, "daemon asked for input (STDERR_READ), which this operation does not send")

		case stderrStartActivity:
			ev.Kind = EventStartActivity
			if ev.ActivityID, err = r.uint64("activity id"); err != nil {
				return err
			}
			lvl, err := r.uint64("activity level")
			if err != nil {
				return err
			}
			ev.Level = Verbosity(lvl)
			typ, err := r.uint64("activity type")
			if err != nil {
				return err
			}
			ev.Type = ActivityType(typ)
			if ev.Text, err = r.string("activity text", maxLogLen); err != nil {
				return err
			}
			if ev.Fields, err = readFields(r); err != nil {
				return err
			}
			if ev.Parent, err = r.uint64("activity parent"); err != nil {
				return err
			}

		case stderrStopActivity:
			ev.Kind = EventStopActivity
			if ev.ActivityID, err = r.uint64("activity id"); err != nil {
				return err
			}

		case stderrResult:
			ev.Kind = EventResult
			if ev.ActivityID, err = r.uint64("activity id"); err != nil {
				return err
			}
			typ, err := r.uint64("result type")
			if err != nil {
				return err
			}
			ev.ResultType = ResultType(typ)
			if ev.Fields, err = readFields(r); err != nil {
				return err
			}

		default:
			return protoErr(r.op, "unknown stderr message type %#x", msg)
		}
		if onEvent != nil {
			onEvent(ev)
		}
	}
}

// readFields reads Logger::Fields: a count, then per field a type tag
// (0 int, 1 string) and the value (readFields in
// worker-protocol-connection.cc).
func readFields(r *reader) ([]any, error) {
	n, err := r.count("fields", maxFieldCount)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	fields := make([]any, 0, n)
	for range n {
		typ, err := r.uint64("field type")
		if err != nil {
			return nil, err
		}
		switch typ {
		case fieldInt:
			i, err := r.uint64("int field")
			if err != nil {
				return nil, err
			}
			fields = append(fields, i)
		case fieldString:
			s, err := r.string("string field", maxLogLen)
			if err != nil {
				return nil, err
			}
			fields = append(fields, s)
		default:
			return nil, protoErr(r.op, "unknown field type %d", typ)
		}
	}
	return fields, nil
}

// readDaemonError reads the body of STDERR_ERROR. From 1.26 it is the
// structured Error of serialise.cc: "Error", level, name (unused), message,
// havePos (always 0), then traces of {havePos (0), hint}. Before that it is
// a message and an exit status.
func readDaemonError(r *reader, v ProtocolVersion) error {
	e := &DaemonError{Op: r.op}
	var err error
	if v.Minor() < verStructuredErrors {
		if e.Message, err = r.string("error message", maxLogLen); err != nil {
			return err
		}
		if e.Status, err = r.uint64("error status"); err != nil {
			return err
		}
		return e
	}
	typ, err := r.string("error type", 64)
	if err != nil {
		return err
	}
	if typ != "Error" {
		return protoErr(r.op, "error type %q, want \"Error\"", typ)
	}
	lvl, err := r.uint64("error level")
	if err != nil {
		return err
	}
	e.Level = Verbosity(lvl)
	if _, err = r.string("error name", maxLogLen); err != nil {
		return err
	}
	if e.Message, err = r.string("error message", maxLogLen); err != nil {
		return err
	}
	havePos, err := r.uint64("error position flag")
	if err != nil {
		return err
	}
	if havePos != 0 {
		return protoErr(r.op, "error with a position (havePos=%d) is not part of the protocol", havePos)
	}
	n, err := r.count("error traces", maxTraceCount)
	if err != nil {
		return err
	}
	for range n {
		havePos, err := r.uint64("trace position flag")
		if err != nil {
			return err
		}
		if havePos != 0 {
			return protoErr(r.op, "trace with a position (havePos=%d) is not part of the protocol", havePos)
		}
		hint, err := r.string("trace", maxLogLen)
		if err != nil {
			return err
		}
		e.Traces = append(e.Traces, hint)
	}
	return e
}
