# The backends and their closure variants: the Nix side of nixgen.Backends
# and nixgen.Variants (tests/variants_test.go evaluates this file and fails
# when the two disagree). checks.nix and sandboxes.nix derive from it.
rec {
  backends = [ "bubblewrap" "container" "vm" ];

  # Backends whose network switch is built into the closure (the vm guest's
  # configuration); elsewhere it is a launch-time flag.
  networkInClosure = [ "vm" ];

  # One closure per backend, two where the network is in the closure.
  variants = builtins.concatMap
    (backend: [ { inherit backend; network = true; } ]
      ++ (if builtins.elem backend networkInClosure then [ { inherit backend; network = false; } ] else [ ]))
    backends;
}
