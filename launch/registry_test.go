package launch

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
)

func TestRegistryDropsDeadAndRecycledPids(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	dir, err := ProjectStateDir("/srv/some project")
	if err != nil {
		t.Fatal(err)
	}
	me, err := proc.StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	dead.Run()
	records := []*Record{
		{ID: "alive", PID: os.Getpid(), PIDStart: me, Started: time.Now()},
		{ID: "recycled", PID: os.Getpid(), PIDStart: me + 1, Started: time.Now()},
		{ID: "dead", PID: dead.Process.Pid, PIDStart: 1, Started: time.Now()},
	}
	for _, r := range records {
		if err := Register(dir, r); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(recordsDir(dir)+"/corrupt.json", []byte("{"), 0o600)
	live, err := Running(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 1 || live[0].ID != "alive" {
		t.Fatalf("live = %+v", live)
	}
	left, _ := os.ReadDir(recordsDir(dir))
	if len(left) != 1 {
		t.Fatalf("stale records not cleaned: %d files", len(left))
	}
}

func TestProjectStateDirDetectsCollisions(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	dir, err := ProjectStateDir("/srv/a")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := ProjectStateDir("/srv/a"); err != nil || again != dir {
		t.Fatalf("second call: %q %v", again, err)
	}
	os.WriteFile(dir+"/path", []byte("/srv/other\n"), 0o600)
	if _, err := ProjectStateDir("/srv/a"); err == nil {
		t.Fatal("a state directory owned by another project was reused")
	}
	if _, err := os.Stat(dir + "/CACHEDIR.TAG"); err != nil {
		t.Fatal("no CACHEDIR.TAG")
	}
}
