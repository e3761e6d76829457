package sessionlog

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestAppendAndRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "session.log")
	l, err := Open(path, "abc123")
	if err != nil {
		t.Fatal(err)
	}
	l.Log(Entry{Service: "nix", Decision: Refuse, Op: "BuildPaths", Target: "/nix/store/x.drv", Rule: "builds-need-sandbox"})
	l.Log(Entry{Service: "net", Decision: Allow, Op: "CONNECT", Target: "example.com:443"})
	l.Close()
	// A killed writer's torn line, and garbage, are skipped.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("not json\n{\"service\":\"net\",\"decis")
	f.Close()

	var got []Entry
	if err := Read(path, func(e Entry) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("read %d entries, want 2: %+v", len(got), got)
	}
	if got[0].Sandbox != "abc123" || got[0].Decision != Refuse || got[0].Time.IsZero() {
		t.Errorf("first entry not stamped: %+v", got[0])
	}
	if got[1].Target != "example.com:443" {
		t.Errorf("second entry: %+v", got[1])
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("log mode %v, want 0600 (it names what the sandbox tried)", st.Mode().Perm())
	}
}

func TestMissingLogIsEmpty(t *testing.T) {
	n := 0
	if err := Read(filepath.Join(t.TempDir(), "none"), func(Entry) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("Read of a missing log: %d entries, %v", n, err)
	}
}

func TestConcurrentWritersKeepLinesWhole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "session.log")
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		l, err := Open(path, "w")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer l.Close()
			for i := 0; i < 200; i++ {
				l.Log(Entry{Service: "net", Decision: Allow, Target: "a-rather-long-host-name.example.com:443", Reason: "padding padding padding padding"})
			}
		}()
	}
	wg.Wait()
	n := 0
	Read(path, func(Entry) error { n++; return nil })
	if n != 800 {
		t.Fatalf("%d whole entries, want 800", n)
	}
}

func TestRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "session.log")
	l, err := Open(path, "r")
	if err != nil {
		t.Fatal(err)
	}
	l.maxSize = 1000
	for i := 0; i < 50; i++ {
		l.Log(Entry{Service: "net", Decision: Refuse, Target: "x.example.com:443"})
	}
	l.Close()
	if _, err := os.Stat(path + ".1"); err != nil {
		t.Fatalf("no rotated file: %v", err)
	}
	st, _ := os.Stat(path)
	if st.Size() > 1000 {
		t.Errorf("current log is %d bytes, over the 1000-byte bound", st.Size())
	}
	n := 0
	Read(path, func(Entry) error { n++; return nil })
	if n == 0 || n > 50 {
		t.Errorf("read %d entries after rotation", n)
	}
}

func TestFollowSeesNewEntries(t *testing.T) {
	path := filepath.Join(t.TempDir(), "session.log")
	l, _ := Open(path, "f")
	l.Log(Entry{Service: "nix", Decision: Allow, Op: "QueryPathInfo"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := make(chan Entry, 4)
	go Follow(ctx, path, 10*time.Millisecond, func(e Entry) error { got <- e; return nil })
	if e := <-got; e.Op != "QueryPathInfo" {
		t.Fatalf("first followed entry %+v", e)
	}
	l.Log(Entry{Service: "net", Decision: Refuse, Op: "CONNECT", Target: "evil.example:443"})
	select {
	case e := <-got:
		if e.Target != "evil.example:443" {
			t.Fatalf("followed %+v", e)
		}
	case <-ctx.Done():
		t.Fatal("Follow did not deliver an entry appended later")
	}
	l.Close()
}
