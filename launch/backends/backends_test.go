package backends

import (
	"errors"
	"slices"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/launch/container"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
)

// TestBackendsAreTheBuildableOnes: the backends a launch can pick are the
// ones a build can make, each under its own name, and they agree with the
// build side on whether the network is part of the closure.
func TestBackendsAreTheBuildableOnes(t *testing.T) {
	want := slices.Sorted(slices.Values(nixgen.Backends))
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("launch backends %v, buildable backends %v", got, want)
	}
	for _, name := range nixgen.Backends {
		b, err := Get(name)
		if err != nil {
			t.Fatal(err)
		}
		if b.Name() != name {
			t.Errorf("backend %q calls itself %q", name, b.Name())
		}
		if b.Traits().NetworkInClosure != nixgen.NetworkInClosure(name) {
			t.Errorf("%s: the launch says network-in-closure is %t, the build %t", name, b.Traits().NetworkInClosure, nixgen.NetworkInClosure(name))
		}
	}
	var unknown *nixgen.UnknownBackendError
	if _, err := Get("docker"); !errors.As(err, &unknown) {
		t.Errorf("an unknown backend: %v", err)
	}
}

func TestEntryNamesAndHelpers(t *testing.T) {
	for cmd, want := range map[string]string{"claude-sandbox-container": "container", "claude-sandbox-vm": "vm"} {
		if got, ok := FromEntryName(cmd); !ok || got != want {
			t.Errorf("%s: %q %v", cmd, got, ok)
		}
	}
	for _, cmd := range []string{"claude-sandbox", "claude-sandbox-", "claude-sandbox-docker", "sandbox-vm"} {
		if got, ok := FromEntryName(cmd); ok {
			t.Errorf("%s selects %q", cmd, got)
		}
	}
	if Helper(container.InitPath) == nil || Helper("/usr/bin/claude-sandbox") != nil || Helper("claude-sandbox") != nil {
		t.Error("the container init is not recognised by its path alone")
	}
}
