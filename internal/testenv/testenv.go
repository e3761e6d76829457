// Package testenv decides what a test does when a prerequisite is missing:
// skip with a reason on a developer's machine, fail under CI (where the CI
// script installs everything, so a missing tool is a broken setup).
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the CI environment variable is set.
func InCI() bool { return os.Getenv("CI") != "" }

// Require skips (or, under CI, fails) the test when ok is false.
func Require(t testing.TB, ok bool, missing string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("prerequisite missing under CI: %s", missing)
	}
	t.Skipf("skipped: %s", missing)
}

// RequireProgram requires a program on PATH and returns its path.
func RequireProgram(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Require(t, err == nil, name+" is not installed (not on PATH)")
	return p
}

// RequireRoot requires root. The CI script runs the suite a second time as
// an unprivileged user on purpose; there root-only tests skip by design,
// not for a missing prerequisite.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CLAUDE_SANDBOX_TEST_UNPRIVILEGED_PASS") != "" {
		t.Skip("skipped: needs root; this is the unprivileged pass, the root pass runs it")
	}
	Require(t, false, "needs root")
}
