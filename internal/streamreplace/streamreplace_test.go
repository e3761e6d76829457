package streamreplace

import (
	"bytes"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
)

func pairs(kv ...string) []Pair {
	var ps []Pair
	for i := 0; i+1 < len(kv); i += 2 {
		ps = append(ps, Pair{[]byte(kv[i]), []byte(kv[i+1])})
	}
	return ps
}

// chunked gives its data in the pieces it was made of, one per Read.
type chunked struct{ parts [][]byte }

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.parts[0])
	c.parts[0] = c.parts[0][n:]
	if len(c.parts[0]) == 0 {
		c.parts = c.parts[1:]
	}
	return n, nil
}

func TestReplacesAcrossEveryCut(t *testing.T) {
	ps := pairs("sk-secret-VALUE", "sk-placeholder1", "tok", "TOKEN")
	in := "a sk-secret-VALUE b tok sk-secret-VALUsk-secret-VALUE tosk-secret-VALUEk end sk-secret-VAL"
	want := strings.NewReplacer("sk-secret-VALUE", "sk-placeholder1", "tok", "TOKEN").Replace(in)
	for cut := 0; cut <= len(in); cut++ {
		for cut2 := cut; cut2 <= len(in); cut2 += 7 {
			src := &chunked{parts: [][]byte{[]byte(in[:cut]), []byte(in[cut:cut2]), []byte(in[cut2:])}}
			got, err := io.ReadAll(NewReader(src, ps))
			if err != nil || string(got) != want {
				t.Fatalf("cut %d,%d: %q %v, want %q", cut, cut2, got, err, want)
			}
		}
	}
}

func TestOneByteReads(t *testing.T) {
	ps := pairs("secret", "XXXXXX")
	in := strings.Repeat("a secret, sec, secre, secret!", 50)
	got, err := io.ReadAll(NewReader(iotest.OneByteReader(strings.NewReader(in)), ps))
	if err != nil || string(got) != strings.ReplaceAll(in, "secret", "XXXXXX") {
		t.Fatalf("%q %v", got, err)
	}
}

// An event that ends in bytes no Old starts with comes out whole at
// once: a stream is not held back.
func TestNothingHeldBackWithoutAPartialMatch(t *testing.T) {
	ps := pairs("sk-ant-api03-abc", "sk-ant-api03-xyz")
	pr, pw := io.Pipe()
	r := NewReader(pr, ps)
	go pw.Write([]byte("data: {\"a\":1}\n\n"))
	buf := make([]byte, 100)
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != "data: {\"a\":1}\n\n" {
		t.Fatalf("%q %v", buf[:n], err)
	}
	// A tail that may start a value waits for the next bytes.
	go pw.Write([]byte("x sk-ant"))
	n, _ = r.Read(buf)
	if string(buf[:n]) != "x " {
		t.Fatalf("held: %q", buf[:n])
	}
	go func() { pw.Write([]byte("-api03-abc.")); pw.Close() }()
	rest, _ := io.ReadAll(r)
	if string(rest) != "sk-ant-api03-xyz." {
		t.Fatalf("rest %q", rest)
	}
}

func TestRandomAgainstReplacer(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	olds := []string{"abcab", "bca", "ab", "zzzzzzzz"}
	ps := pairs("abcab", "1", "bca", "22", "ab", "333", "zzzzzzzz", "4")
	// strings.Replacer picks, at each position, the first old in its
	// argument order that matches: list the longer first, as Reader does.
	ref := strings.NewReplacer("zzzzzzzz", "4", "abcab", "1", "bca", "22", "ab", "333")
	for i := 0; i < 2000; i++ {
		var b strings.Builder
		for j := rng.IntN(60); j > 0; j-- {
			if rng.IntN(3) == 0 {
				b.WriteString(olds[rng.IntN(len(olds))])
			} else {
				b.WriteByte("abcz"[rng.IntN(4)])
			}
		}
		in := b.String()
		var parts [][]byte
		for rest := in; len(rest) > 0; {
			k := 1 + rng.IntN(len(rest))
			parts = append(parts, []byte(rest[:k]))
			rest = rest[k:]
		}
		got, _ := io.ReadAll(NewReader(&chunked{parts: parts}, ps))
		if want := ref.Replace(in); string(got) != want {
			t.Fatalf("%q: got %q want %q", in, got, want)
		}
	}
}

func TestNoPairsIsTheSource(t *testing.T) {
	src := strings.NewReader("x")
	if NewReader(src, pairs("", "y")) != io.Reader(src) {
		t.Fatal("wrapped without pairs")
	}
}

func BenchmarkReader(b *testing.B) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	ps := pairs("sk-ant-api03-0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789ab", "x")
	b.SetBytes(int64(len(data)))
	buf := make([]byte, 32<<10)
	for b.Loop() {
		r := NewReader(bytes.NewReader(data), ps)
		for {
			if _, err := r.Read(buf); err != nil {
				break
			}
		}
	}
}
