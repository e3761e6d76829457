// Package streamreplace replaces strings in a stream without holding the
// stream back: what it returns is everything read so far except the
// shortest tail that could still become one of the strings. A response
// streamed event by event (server-sent events end in a newline, which no
// token starts with) reaches its reader as it comes.
package streamreplace

import (
	"bytes"
	"io"
)

// Pair is a string to replace and its replacement.
type Pair struct{ Old, New []byte }

// Reader replaces every Old of its pairs with its New in what it reads.
// Where two Olds start at the same place the longer wins.
type Reader struct {
	src    io.Reader
	pairs  []Pair
	buf    []byte // what src gave
	carry  []byte // read but not returned: a proper prefix of some Old
	joined []byte // carry and new bytes, when there is a carry
	out    []byte // ready to return
	err    error
}

// bufSize is one read from the source: at least a TLS record.
const bufSize = 32 << 10

// NewReader reads src with the pairs' Olds replaced. Pairs with an empty
// Old are dropped; with none left, src itself is returned.
func NewReader(src io.Reader, pairs []Pair) io.Reader {
	var ps []Pair
	for _, p := range pairs {
		if len(p.Old) > 0 {
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		return src
	}
	// Longer Olds first, so one that contains another is replaced whole.
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && len(ps[j].Old) > len(ps[j-1].Old); j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
	return &Reader{src: src, pairs: ps, buf: make([]byte, bufSize)}
}

func (r *Reader) Read(p []byte) (int, error) {
	for len(r.out) == 0 {
		if r.err != nil {
			if len(r.carry) > 0 {
				r.out, r.carry = r.replace(r.carry, true)
				continue
			}
			return 0, r.err
		}
		n, err := r.src.Read(r.buf)
		r.err = err
		if n == 0 {
			continue
		}
		data := r.buf[:n]
		if len(r.carry) > 0 {
			r.joined = append(append(r.joined[:0], r.carry...), data...)
			data = r.joined
		}
		r.out, r.carry = r.replace(data, err != nil)
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}

// replace returns data with every complete Old replaced, less the tail
// that could be the start of an Old (unless final), and that tail (a
// copy: data's backing array is reused by the next read).
func (r *Reader) replace(data []byte, final bool) (out, carry []byte) {
	var built []byte
	start := 0
	for {
		at, which := -1, -1
		for i, p := range r.pairs {
			if k := bytes.Index(data[start:], p.Old); k >= 0 && (at < 0 || k < at) {
				at, which = k, i
			}
		}
		if at < 0 || (!final && r.longerMayStart(data[start+at:], len(r.pairs[which].Old))) {
			break
		}
		built = append(built, data[start:start+at]...)
		built = append(built, r.pairs[which].New...)
		start += at + len(r.pairs[which].Old)
	}
	tail := data[start:]
	hold := 0
	if !final {
		hold = r.partial(tail)
	}
	carry = append([]byte(nil), tail[len(tail)-hold:]...)
	if built == nil {
		return tail[:len(tail)-hold], carry
	}
	return append(built, tail[:len(tail)-hold]...), carry
}

// longerMayStart says whether rest, where an Old of length n matched,
// could also be the start of a longer Old that has not all arrived.
func (r *Reader) longerMayStart(rest []byte, n int) bool {
	for _, p := range r.pairs {
		if len(p.Old) > n && len(rest) < len(p.Old) && bytes.HasPrefix(p.Old, rest) {
			return true
		}
	}
	return false
}

// partial is the length of the longest end of b that is a proper
// prefix of some Old.
func (r *Reader) partial(b []byte) int {
	best := 0
	for _, p := range r.pairs {
		for k := min(len(p.Old)-1, len(b)); k > best; k-- {
			if b[len(b)-k] == p.Old[0] && bytes.HasPrefix(p.Old, b[len(b)-k:]) {
				best = k
				break
			}
		}
	}
	return best
}
