package placeholder

import (
	"os"
	"path/filepath"
	"testing"
)

// Two sandboxes share a placeholder: the first to end leaves it (the
// other still holds it), the last removes it and its record.
func TestTheLastHolderRemovesIt(t *testing.T) {
	dir, records := t.TempDir(), t.TempDir()
	p := filepath.Join(dir, ".envrc")
	a, err := Hold(p, records, nil)
	if err != nil || !a.Made || !a.Recorded {
		t.Fatalf("first hold: %+v %v", a, err)
	}
	b, err := Hold(p, records, nil)
	if err != nil || b.Made || !b.Recorded {
		t.Fatalf("second hold: %+v %v", b, err)
	}
	if removed, err := Release(a.Path, a.File, a.Recorded, records); removed || err != nil {
		t.Fatalf("released while another sandbox holds it: %v %v", removed, err)
	}
	if _, err := os.Lstat(p); err != nil {
		t.Fatal("the placeholder went while held")
	}
	if removed, err := Release(b.Path, b.File, b.Recorded, records); !removed || err != nil {
		t.Fatalf("the last holder did not remove it: %v %v", removed, err)
	}
	if _, err := os.Lstat(p); err == nil {
		t.Error("the placeholder is still there")
	}
	if Recorded(records, p) {
		t.Error("its record is still there")
	}
}

// What is not empty any more is the host user's: kept, and forgotten.
func TestAFilledPlaceholderIsKept(t *testing.T) {
	dir, records := t.TempDir(), t.TempDir()
	p := filepath.Join(dir, ".vscode")
	h, err := Hold(p, records, nil)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(p, "settings.json"), []byte("{}"), 0o644)
	if removed, err := Release(h.Path, h.File, h.Recorded, records); removed || err != nil {
		t.Fatalf("%v %v", removed, err)
	}
	if _, err := os.Stat(filepath.Join(p, "settings.json")); err != nil {
		t.Error("the user's file went")
	}
	if Recorded(records, p) {
		t.Error("a directory that is the user's now is still recorded as a placeholder")
	}
}

// A directory no sandbox made (the user's own, empty) is held but never
// removed; a symbolic link is never followed.
func TestOnlyWhatASandboxMadeIsRemoved(t *testing.T) {
	dir, records := t.TempDir(), t.TempDir()
	p := filepath.Join(dir, ".idea")
	os.Mkdir(p, 0o755)
	h, err := Hold(p, records, nil)
	if err != nil || h.Made || h.Recorded {
		t.Fatalf("%+v %v", h, err)
	}
	if removed, _ := Release(h.Path, h.File, h.Recorded, records); removed {
		t.Error("the user's empty directory was removed")
	}
	target := t.TempDir()
	link := filepath.Join(dir, ".claude")
	os.Symlink(target, link)
	if _, err := Hold(link, records, nil); err == nil {
		t.Error("a symbolic link was held")
	}
}

// A placeholder left by a killed run is recorded: the next sandbox holds
// it as made by a sandbox, and removes it at its end.
func TestALeftoverIsRecognised(t *testing.T) {
	dir, records := t.TempDir(), t.TempDir()
	p := filepath.Join(dir, ".mcp.json")
	h, err := Hold(p, records, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.File.Close() // killed: released nothing
	again, err := Hold(p, records, nil)
	if err != nil || again.Made || !again.Recorded {
		t.Fatalf("%+v %v", again, err)
	}
	if removed, _ := Release(again.Path, again.File, again.Recorded, records); !removed {
		t.Error("the leftover was not removed")
	}
}
