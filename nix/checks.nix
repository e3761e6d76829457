# `nix flake check`: the Go unit tests, the evaluation of every template, and
# NixOS VM tests of the module (these need a machine that can fetch nixpkgs
# and run QEMU; see README "Nix flake and NixOS module").
{ pkgs, self, nixpkgs, src, version }:
let
  inherit (pkgs) lib;
  system = pkgs.stdenv.hostPlatform.system;

  sandboxes = pkgs.callPackage ./sandboxes.nix { nixpkgs = "${nixpkgs}"; inherit system; };

  inherit (import ./variants.nix) variants;

  # The NixOS module builds from values, the binary from a request: with
  # nothing extra they must be one derivation, or the module's prebuilt
  # closures would not be the ones claude-sandbox builds.
  sameClosure = v:
    let
      byRequest = sandboxes.fromRequest v;
      byValues = sandboxes.fromValues v;
    in
    lib.assertMsg (byRequest.drvPath == byValues.drvPath)
      "nix/sandboxes.nix fromValues no longer matches templates/entry.nix for ${v.backend} (network ${lib.boolToString v.network}): ${byValues.drvPath} vs ${byRequest.drvPath}";

  # Derivations only: evaluating is the check, building them is the job of
  # the backend packages.
  drvOf = drv: builtins.unsafeDiscardOutputDependency drv.drvPath;
in
{
  # Every template, every backend and network variant, a --with request, the
  # NixOS module's value path with an extra package and an extra module, and
  # templates/names.nix (the suggestions for a misspelt package).
  templates =
    pkgs.runCommand "claude-sandbox-templates-evaluate"
      {
        # Inside the derivation, so listing the checks evaluates nothing.
        drvs = assert lib.all sameClosure variants; map drvOf (
          map sandboxes.fromRequest variants
          ++ [
            (sandboxes.fromRequest { backend = "bubblewrap"; packages = [ [ "python3" ] ]; })
            (sandboxes.fromValues { backend = "bubblewrap"; extraPackages = [ pkgs.jq ]; })
            (sandboxes.fromValues { backend = "container"; extraModules = [ { } ]; })
            (sandboxes.fromValues { backend = "vm"; extraModules = [ { } ]; })
          ]
        );
        names = builtins.toJSON (import ../templates/names.nix {
          schema = 1;
          nixpkgs = sandboxes.nixpkgs;
          inherit system;
          missing = [ [ "pyhton3" ] ];
        });
        # The names beside pyhton3 are nixpkgs' whole top level: over 300 KB
        # of JSON, and Linux refuses to exec a builder with an environment
        # string over 128 KiB (MAX_ARG_STRLEN). Nix writes these to a file.
        passAsFile = [ "names" ];
      }
      ''
        printf '%s\n' $drvs > $out
        cat "$namesPath" >> $out
      '';

  # The unit tests of every package but the end-to-end ones (tests/), which
  # need a Nix daemon, bubblewrap and root that a build sandbox has not got.
  go-tests = pkgs.callPackage ./package.nix {
    inherit src version;
    pname = "claude-sandbox-go-tests";
    subPackages = [ ];
    excludedPackages = [ "tests" ];
    doCheck = true;
  };

  # The NixOS module in a real NixOS VM: prebuilt sandboxes on PATH,
  # bubblewrap as a normal user, the container as root.
  nixos-module = pkgs.testers.runNixOSTest (import ./nixos-test.nix { inherit self; });
}
