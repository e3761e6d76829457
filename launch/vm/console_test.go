package vm

import (
	"strings"
	"testing"
)

// scanAll feeds data to a scanner in chunks of n bytes and collects what
// comes out: payload bytes with each marker written as <tag>.
func scanAll(nonce string, data []byte, n int) string {
	sc := newMarkerScanner(nonce)
	var b strings.Builder
	for len(data) > 0 {
		k := min(n, len(data))
		sc.feed(data[:k], func(p []byte) { b.Write(p) }, func(tag string) { b.WriteString("<" + tag + ">") })
		data = data[k:]
	}
	return b.String()
}

func TestMarkerScannerFramesOutput(t *testing.T) {
	nonce := "e880fbcb0611428428c5ae4a"
	mark := func(tag string) string { return "\x1b_claude-sandbox:" + nonce + ":" + tag + "\x1b\\" }
	stream := []byte("[    0.000000] Linux\r\nboot noise\x1b[0m" + mark("up") + "hello\n\x1b_not a marker\x1b\\" +
		"\x1b_claude-sandbox:" + "wrongnonce" + ":exit=1\x1b\\" + "bye" + mark("exit=5") + "[ 12.3] reboot: Power down")
	want := "[    0.000000] Linux\r\nboot noise\x1b[0m<up>hello\n\x1b_not a marker\x1b\\" +
		"\x1b_claude-sandbox:wrongnonce:exit=1\x1b\\bye<exit=5>[ 12.3] reboot: Power down"
	for _, n := range []int{1, 2, 3, 7, 16, 4096} {
		if got := scanAll(nonce, stream, n); got != want {
			t.Errorf("chunks of %d:\n got %q\nwant %q", n, got, want)
		}
	}
}

func TestMarkerScannerGivesBackLongGarbage(t *testing.T) {
	nonce := "n"
	in := "\x1b_claude-sandbox:n:" + strings.Repeat("x", 40) + "tail"
	if got := scanAll(nonce, []byte(in), 5); got != in {
		t.Errorf("got %q, want the input back", got)
	}
}

func TestExitStatus(t *testing.T) {
	for tag, want := range map[string]int{"exit=0": 0, "exit=143": 143} {
		if got, ok := exitStatus(tag); !ok || got != want {
			t.Errorf("exitStatus(%q) = %d, %t", tag, got, ok)
		}
	}
	for _, tag := range []string{"up", "exit=", "exit=-1", "exit=256", "exit=1x"} {
		if _, ok := exitStatus(tag); ok {
			t.Errorf("exitStatus(%q) accepted", tag)
		}
	}
}
