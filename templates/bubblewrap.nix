# The bubblewrap backend: one environment of every sandbox package, plus the
# manifest that tells the Go launcher which store paths to mount and run.
# Run-time choices (network, project, host sockets) are not made here.
{ pkgs, spec, extraPackages ? [ ], network ? true, ... }:
let
  inherit (pkgs) lib;

  # Chromium as the sandbox runs it, as the original project did: with the
  # per-project profile the launcher binds at ~/.config/chromium, and off the
  # session bus, where a second sandbox's Chromium would find the first one's
  # and hand its windows over to it. It shadows chromium's own bin/chromium.
  chromium = pkgs.writeShellScriptBin "chromium" ''
    export DBUS_SESSION_BUS_ADDRESS=disabled:
    exec ${pkgs.chromium}/bin/chromium --user-data-dir="$HOME/.config/chromium" "$@"
  '';

  # The managed policy (the Claude extension, force-installed). Chromium
  # reads /etc/chromium/policies/managed/*.json; the launcher binds this
  # directory of the environment there (the directory the NixOS module
  # writes its policies to: nixos/modules/programs/chromium.nix).
  chromiumPolicy = pkgs.writeTextDir "etc/chromium/policies/managed/claude-sandbox.json"
    (builtins.toJSON spec.chromiumPolicy);

  env = pkgs.buildEnv {
    name = "claude-sandbox-env";
    # On a file collision the first path wins: the Chromium wrapper beats
    # chromium's own binary, and a user's `--with` choice beats the default set.
    paths = [ chromium chromiumPolicy ] ++ extraPackages ++ spec.packages;
    pathsToLink = [ "/bin" "/share" "/lib" "/libexec" "/etc" ];
    ignoreCollisions = true;
  };


  manifest = {
    schema = 1;
    backend = "bubblewrap";
    bwrap = "${pkgs.bubblewrap}/bin/bwrap";
    env = "${env}";
    path = [ "${env}/bin" ];
    shell = "${pkgs.bashInteractive}/bin/bash";
    usrBinEnv = "${pkgs.coreutils}/bin/env";
    claude = "${pkgs.claude-code}/bin/claude";
    inherit (spec) nixLd;
    hostEtc = spec.hostEtc;
    packages = spec.packageNames;
  };
in
pkgs.runCommand "claude-sandbox-bubblewrap" { } ''
  mkdir -p $out/share/claude-sandbox
  cp ${pkgs.writeText "manifest.json" (builtins.toJSON manifest)} $out/share/claude-sandbox/manifest.json
''
