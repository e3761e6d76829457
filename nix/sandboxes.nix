# Sandbox closures for the flake's packages and the NixOS module, made by the
# very templates/ the binary embeds, never by a copy of them:
#
# - fromRequest: the request claude-sandbox itself writes for a backend's
#   default configuration, evaluated by templates/entry.nix. Same files, same
#   data, so the same derivation as `claude-sandbox build` with this nixpkgs.
# - fromValues: the backend template called with package and module *values*
#   (services.claude-sandbox.bubblewrap.extraPackages, *.extraModules), which
#   a request cannot carry: it holds attribute paths and module files. It
#   passes what entry.nix passes after resolving names; checks.templates
#   proves both give one closure when there is nothing extra.
# - prebuiltFile: the list the wrappers hand to the binary (--prebuilt),
#   read by cmd/claude-sandbox/prebuilt.go.
{ lib
, writeText
  # nixpkgs to build sandboxes from, as an absolute store path string.
, nixpkgs
, system
, templates ? ../templates
}:
let
  # A request path reaches Nix as plain data, as from the binary's JSON.
  nixpkgsPath = builtins.unsafeDiscardStringContext (toString nixpkgs);

  # nixgen.Canonical: the network is in the closure for some backends only.
  networkInClosure = backend: builtins.elem backend (import ./variants.nix).networkInClosure;

  fromRequest = { backend, network ? true, packages ? [ ] }:
    import (templates + "/entry.nix") {
      schema = 1;
      nixpkgs = nixpkgsPath;
      inherit system;
      options = { inherit backend packages; }
        // lib.optionalAttrs (networkInClosure backend) { inherit network; };
    };

  pkgs = import (templates + "/nixpkgs.nix") { nixpkgs = nixpkgsPath; inherit system; };

  fromValues = { backend, network ? true, extraPackages ? [ ], extraModules ? [ ] }:
    import (templates + "/${backend}.nix") {
      inherit pkgs extraPackages extraModules;
      spec = import (templates + "/spec.nix") { inherit pkgs; inherit (pkgs) lib; };
      network = if networkInClosure backend then network else true;
      evalConfig = import (pkgs.path + "/nixos/lib/eval-config.nix");
    };

  # closures: [ { backend; network; closure; } ]
  prebuiltFile = closures: writeText "claude-sandbox-prebuilt.json" (builtins.toJSON {
    schema = 1;
    closures = map
      (c: {
        inherit (c) backend;
        network = if networkInClosure c.backend then c.network else null;
        # Not "outPath": toJSON would turn the whole set into that string.
        path = "${c.closure}";
      })
      closures;
  });
in
{
  inherit fromRequest fromValues prebuiltFile networkInClosure;
  nixpkgs = nixpkgsPath;
}
