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
  isPackage = value: builtins.isAttrs value && (value.type or null) == "derivation";
  notPackages = builtins.filter (path: !(isPackage (lib.getAttrFromPath path pkgs))) options.packages;

  # A nixpkgs Python imports only from its own prefix: python3Packages.X in
  # an environment beside python3 is not importable. Only withPackages'
  # wrapper points the interpreter at its packages
  # (pkgs/development/interpreters/python/wrapper.nix sets the prefix,
  # sitecustomize.py reads it). So a library name goes into withPackages of
  # its interpreter, and the interpreter named alone is left out, since its
  # bin/python3 would shadow the environment's.
  interpreterOf = name:
    if builtins.match "python3[0-9]*" name == null || !(pkgs ? ${name}) || !(pkgs.${name} ? withPackages) then null
    # python3 is one of the python3XX: one environment, the default set's (spec.nix).
    else if pkgs.${name}.outPath == pkgs.python3.outPath then "python3"
    else name;
  libraryOf = path:
    let set = builtins.match "(python3[0-9]*)Packages" (builtins.head path); in
    if builtins.length path == 2 && set != null then interpreterOf (builtins.head set) else null;
  libraries = builtins.filter (path: libraryOf path != null) options.packages;
  interpreters = lib.unique ([ "python3" ] ++ map libraryOf libraries);
  librariesOf = interpreter: map (path: builtins.elemAt path 1) (builtins.filter (path: libraryOf path == interpreter) libraries);
  providedByAnEnvironment = path:
    libraryOf path != null
    || (builtins.length path == 1 && builtins.elem (interpreterOf (builtins.head path)) interpreters);

  extraPackages =
    map (path: lib.getAttrFromPath path pkgs) (builtins.filter (path: !(providedByAnEnvironment path)) options.packages)
    ++ map (interpreter: pkgs.${interpreter}.withPackages (ps: map (name: ps.${name}) (librariesOf interpreter)))
      (lib.remove "python3" interpreters);

  spec = import ./spec.nix { inherit pkgs lib; pythonLibraries = librariesOf "python3"; };
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
