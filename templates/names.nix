# For each missing package path, the attribute names beside it (the names of
# its parent set), so the Go side can suggest the closest ones. Only run after
# an evaluation failed on unknown packages.
request:
let
  pkgs = import ./nixpkgs.nix request;
  parentPath = path: builtins.genList (builtins.elemAt path) (builtins.length path - 1);
  namesBeside = path:
    let parent = pkgs.lib.attrByPath (parentPath path) null pkgs;
    in if builtins.isAttrs parent then builtins.attrNames parent else [ ];
in
map namesBeside request.missing
