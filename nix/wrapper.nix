# An entry command under the original project's names (claude-sandbox,
# claude-sandbox-container, claude-sandbox-vm): the claude-sandbox binary
# with a backend and network preset and, unless prebuild is off, the
# closures built with this package (--prebuilt), so the default
# configuration starts without evaluating Nix. Every other argument is the
# user's, passed through unchanged ("$@").
{ lib, writeShellScriptBin, sandboxes }:

{ name
, claude-sandbox
  # [ { backend; network; closure; } ]; empty: build on first launch instead.
, closures ? [ ]
  # Fixed flags, such as [ "--backend" "container" "--no-network" ].
, args ? [ ]
}:
let
  prebuilt = lib.optionals (closures != [ ]) [ "--prebuilt" "${sandboxes.prebuiltFile closures}" ];
in
writeShellScriptBin name ''
  exec ${claude-sandbox}/bin/claude-sandbox ${lib.escapeShellArgs (prebuilt ++ args)} "$@"
''
