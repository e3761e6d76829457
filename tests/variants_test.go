package tests

import (
	"encoding/json"
	"os/exec"
	"slices"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
)

// TestNixKnowsTheSameBackends: the flake's packages, checks and module
// build closures from nix/variants.nix; the binary from nixgen. A backend
// or variant added on one side only would give a package the binary
// cannot launch, or a closure the flake never checks.
func TestNixKnowsTheSameBackends(t *testing.T) {
	testenv.RequireProgram(t, "nix-instantiate")
	out, err := exec.Command("nix-instantiate", "--eval", "--json", "--strict", "../nix/variants.nix").Output()
	if err != nil {
		t.Fatalf("evaluating nix/variants.nix: %v", err)
	}
	var nix struct {
		Backends         []string         `json:"backends"`
		NetworkInClosure []string         `json:"networkInClosure"`
		Variants         []nixgen.Variant `json:"variants"`
	}
	if err := json.Unmarshal(out, &nix); err != nil {
		t.Fatalf("nix/variants.nix gave %s: %v", out, err)
	}
	if !slices.Equal(nix.Backends, nixgen.Backends) {
		t.Errorf("backends: Nix %v, Go %v", nix.Backends, nixgen.Backends)
	}
	for _, b := range nixgen.Backends {
		if slices.Contains(nix.NetworkInClosure, b) != nixgen.NetworkInClosure(b) {
			t.Errorf("%s: Nix and Go disagree on whether the network is in its closure", b)
		}
	}
	if !slices.Equal(nix.Variants, nixgen.Variants()) {
		t.Errorf("variants: Nix %v, Go %v", nix.Variants, nixgen.Variants())
	}
}
