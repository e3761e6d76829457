# The flake's packages for one system: the binary (default) and the original
# project's six backend packages, same names, same entry commands:
#
#   package                 entry                      backend     network
#   sandbox                 claude-sandbox             bubblewrap  on
#   no-network              claude-sandbox             bubblewrap  off
#   container               claude-sandbox-container   container   on
#   container-no-network    claude-sandbox-container   container   off
#   vm                      claude-sandbox-vm          vm          NAT
#   vm-no-network           claude-sandbox-vm          vm          no NIC
#
# (The original's `default` was the bubblewrap sandbox; here `default` is
# the binary itself, which defaults to bubblewrap and takes --with.)
# Each backend package carries its closure, built by `nix build` from
# templates/ with the flake's nixpkgs: the same closure the binary would
# build for that configuration, handed to it with --prebuilt.
{ pkgs, nixpkgs, src, version }:
let
  inherit (pkgs) lib;

  claude-sandbox = pkgs.callPackage ./package.nix { inherit src version nixpkgs; };

  sandboxes = pkgs.callPackage ./sandboxes.nix {
    nixpkgs = "${nixpkgs}";
    system = pkgs.stdenv.hostPlatform.system;
  };

  wrapper = pkgs.callPackage ./wrapper.nix { inherit sandboxes; };

  preset = { entry, backend, network }:
    let closure = sandboxes.fromRequest { inherit backend network; };
    in wrapper {
      name = entry;
      inherit claude-sandbox;
      closures = [ { inherit backend network closure; } ];
      args = [ "--backend" backend ] ++ lib.optional (!network) "--no-network";
    } // {
      # The closure, for checks and for `nix build .#<name>.closure`.
      inherit closure;
      meta = {
        description = "claude-sandbox preset: ${backend} backend, network ${if network then "on" else "off"}";
        mainProgram = entry;
        # Installed beside the default package (which has all three entry
        # names), the preset's entry command wins (lib.hiPrio's priority).
        priority = -10;
      };
    };
in
{
  default = claude-sandbox;

  sandbox = preset { entry = "claude-sandbox"; backend = "bubblewrap"; network = true; };
  no-network = preset { entry = "claude-sandbox"; backend = "bubblewrap"; network = false; };
  container = preset { entry = "claude-sandbox-container"; backend = "container"; network = true; };
  container-no-network = preset { entry = "claude-sandbox-container"; backend = "container"; network = false; };
  vm = preset { entry = "claude-sandbox-vm"; backend = "vm"; network = true; };
  vm-no-network = preset { entry = "claude-sandbox-vm"; backend = "vm"; network = false; };
}
