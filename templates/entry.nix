# The one entry point every generated expression calls. It receives the whole
# request as data (already parsed from JSON) and never sees user text as code.
#
#   request = {
#     schema    = 1;
#     nixpkgs   = "/nix/store/…-source";   # where to import nixpkgs from
#     system    = "x86_64-linux";
#     options   = { backend = "bubblewrap"; packages = [ [ "python3" ] … ];
#                   modules = [ { path = "/abs/file.nix"; sha256 = "…"; } … ];  # container, vm
#                   network = true; };                                          # vm only
#   }
request:
let
  pkgs = import ./nixpkgs.nix request;
  inherit (pkgs) lib;
  options = request.options;

  # Checked here rather than left to getAttrFromPath so that the Go side gets
  # one machine-readable line listing every missing name at once.
  missing = builtins.filter (path: !(lib.hasAttrByPath path pkgs)) options.packages;
  extraPackages = map (path: lib.getAttrFromPath path pkgs) options.packages;
  isPackage = value: builtins.isAttrs value && (value.type or null) == "derivation";
  notPackages = builtins.filter (path: !(isPackage (lib.getAttrFromPath path pkgs))) options.packages;

  spec = import ./spec.nix { inherit pkgs lib; };
  # The user's own NixOS module files (--module): code by the user's choice.
  extraModules = map (module: /. + module.path) (options.modules or [ ]);

  backends = {
    bubblewrap = ./bubblewrap.nix;
    container = ./container.nix;
    vm = ./vm.nix;
  };
in
if missing != [ ] then
  throw "claude-sandbox:unknown-packages:${builtins.toJSON missing}"
else if notPackages != [ ] then
  throw "claude-sandbox:not-packages:${builtins.toJSON notPackages}"
else
  import backends.${options.backend} {
    inherit pkgs spec extraPackages extraModules;
    network = options.network or true;
    # NixOS evaluation of this very nixpkgs, for the container and vm backends.
    evalConfig = import (pkgs.path + "/nixos/lib/eval-config.nix");
  }
