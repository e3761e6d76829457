package sshagent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Message numbers, from OpenSSH's PROTOCOL.agent and authfd.h
// (draft-miller-ssh-agent).
const (
	msgV1RequestIdentities      = 1
	msgV1RemoveAllIdentities    = 9
	msgFailure                  = 5
	msgSuccess                  = 6
	msgRequestIdentities        = 11
	msgIdentitiesAnswer         = 12
	msgSignRequest              = 13
	msgSignResponse             = 14
	msgAddIdentity              = 17
	msgRemoveIdentity           = 18
	msgRemoveAllIdentities      = 19
	msgAddSmartcardKey          = 20
	msgRemoveSmartcardKey       = 21
	msgLock                     = 22
	msgUnlock                   = 23
	msgAddIDConstrained         = 25
	msgAddSmartcardKeyConstrain = 26
	msgExtension                = 27
	msgExtensionFailure         = 28
)

// sessionBind is the OpenSSH extension that binds an agent connection to
// the SSH session it authenticates (the host key that signed the session
// id): the host agent checks that signature and enforces the destination
// constraints of keys added with `ssh-add -h`.
const sessionBind = "session-bind@openssh.com"

// Limits. A request is a key blob and the data to sign (an SSH session
// id and user-auth request, or an SSHSIG hash): a few KiB. A reply lists
// the host agent's keys and certificates.
const (
	maxRequest = 256 << 10
	maxReply   = 1 << 20
)

var errTooLarge = errors.New("message too large")

// deadliner is a connection whose reads can be bounded in time.
type deadliner interface {
	SetReadDeadline(time.Time) error
}

// readFrame reads one message of at most max bytes. The length arrives
// under whatever deadline the caller set; the body then has bodyWait.
func readFrame(r io.Reader, max int, bodyWait time.Duration) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return nil, errors.New("empty message")
	}
	if n > uint32(max) {
		return nil, fmt.Errorf("%w: %d bytes (at most %d)", errTooLarge, n, max)
	}
	if d, ok := r.(deadliner); ok && bodyWait > 0 {
		_ = d.SetReadDeadline(time.Now().Add(bodyWait))
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

// writeFrame writes one message with its length, in one write.
func writeFrame(w io.Writer, msg []byte) error {
	buf := make([]byte, 4+len(msg))
	binary.BigEndian.PutUint32(buf, uint32(len(msg)))
	copy(buf[4:], msg)
	_, err := w.Write(buf)
	return err
}

// wire reads the SSH encoding (RFC 4251): uint32 lengths, strings, bools.
type wire struct {
	b   []byte
	err bool
}

func (w *wire) byte1() byte {
	if len(w.b) < 1 {
		w.err = true
		return 0
	}
	v := w.b[0]
	w.b = w.b[1:]
	return v
}

func (w *wire) uint32() uint32 {
	if len(w.b) < 4 {
		w.err = true
		return 0
	}
	v := binary.BigEndian.Uint32(w.b)
	w.b = w.b[4:]
	return v
}

func (w *wire) string() []byte {
	n := w.uint32()
	if w.err || uint64(n) > uint64(len(w.b)) {
		w.err = true
		return nil
	}
	v := w.b[:n]
	w.b = w.b[n:]
	return v
}

func appendString(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// identity is one key of an identities answer.
type identity struct {
	blob    []byte
	comment string
}

func parseIdentities(msg []byte) ([]identity, error) {
	w := &wire{b: msg}
	if w.byte1() != msgIdentitiesAnswer {
		return nil, errors.New("the host agent did not answer with a key list")
	}
	n := w.uint32()
	var out []identity
	for i := uint32(0); i < n && !w.err; i++ {
		blob := w.string()
		comment := w.string()
		out = append(out, identity{blob: blob, comment: string(comment)})
	}
	if w.err {
		return nil, errors.New("the host agent sent a malformed key list")
	}
	return out, nil
}

func encodeIdentities(ids []identity) []byte {
	b := []byte{msgIdentitiesAnswer}
	b = binary.BigEndian.AppendUint32(b, uint32(len(ids)))
	for _, id := range ids {
		b = appendString(b, id.blob)
		b = appendString(b, []byte(id.comment))
	}
	return b
}

// keyType is the algorithm name a key blob starts with.
func keyType(blob []byte) string {
	w := &wire{b: blob}
	t := w.string()
	if w.err {
		return "unknown"
	}
	return printable(string(t), 64)
}

// printable bounds a string from the sandbox for a log line.
func printable(s string, max int) string {
	out := make([]rune, 0, len(s))
	for _, r := range s {
		if len(out) == max {
			out = append(out, '…')
			break
		}
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			r = '?'
		}
		out = append(out, r)
	}
	return string(out)
}
