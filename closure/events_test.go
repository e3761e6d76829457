package closure

import (
	"strings"
	"testing"
)

// The CLI's internal-json log and the daemon protocol carry the same
// activities: one tracker turns them into the same events.
func TestInternalJSONBecomesEvents(t *testing.T) {
	lines := []string{
		`@nix {"action":"start","id":7,"level":0,"text":"","type":104}`,
		`@nix {"action":"start","fields":["/nix/store/00000000000000000000000000000000-hello-2.12.drv","",1,1],"id":8,"level":3,"text":"building","type":105}`,
		`@nix {"action":"result","fields":["unpackPhase"],"id":8,"type":104}`,
		`@nix {"action":"result","fields":["make: ok"],"id":8,"type":101}`,
		`@nix {"action":"result","fields":[1,2,0,0],"id":7,"type":105}`,
		`@nix {"action":"msg","level":0,"msg":"\u001b[31;1merror:\u001b[0m builder for '/nix/store/00000000000000000000000000000000-hello-2.12.drv' failed with exit code 2"}`,
		`@nix {"action":"stop","id":8}`,
		`not json at all`,
	}
	var got []Event
	tr := newActivityTracker(func(ev Event) { got = append(got, ev) })
	for _, l := range lines {
		if ev, ok := parseInternalJSON(l); ok {
			tr.handle(ev)
		}
	}
	var kinds []string
	for _, ev := range got {
		kinds = append(kinds, string(ev.Kind))
	}
	want := "build-start build-phase build-log progress build-done"
	if strings.Join(kinds, " ") != want {
		t.Fatalf("events %v, want %s", kinds, want)
	}
	if got[0].Name != "hello-2.12" || got[1].Phase != "unpackPhase" || got[3].Done != 1 || got[3].Expected != 2 {
		t.Fatalf("fields: %+v", got)
	}
	plain := tr.plainLines()
	if msg := lastError(plain); !strings.HasPrefix(msg, "builder for") {
		t.Fatalf("lastError = %q (escape codes must be gone)", msg)
	}
	if log := tr.failureLog(strings.Join(plain, "\n")); len(log) != 1 || log[0] != "make: ok" {
		t.Fatalf("failureLog = %v", log)
	}
}
