# The container backend: a NixOS system for systemd-nspawn, evaluated with
# nixos/lib/eval-config.nix of the chosen nixpkgs, the --module files
# appended; a root tree for `systemd-nspawn --volatile=yes` (only its /usr is
# used, read-only; the rest of / is a fresh tmpfs every run); and the
# manifest the Go launcher reads. Who runs inside, the project, the network
# switch: chosen at launch, not here.
{ pkgs, spec, extraPackages ? [ ], extraModules ? [ ], evalConfig, ... }:
let
  inherit (pkgs) lib;

  containerModule = { lib, ... }: {
    # nixos/modules/virtualisation/nixos-containers.nix: also sets the default
    # of boot.isContainer, so the system has no kernel, initrd or boot loader.
    boot.isNspawnContainer = true;
    # nixos/modules/config/system-path.nix links these into $toplevel/sw.
    # mkBefore: on a file collision the first package wins, so a --with
    # choice overrides the default set, as in the bubblewrap backend.
    environment.systemPackages = lib.mkMerge [ (lib.mkBefore extraPackages) spec.packages ];
    # nixos/modules/tasks/network-interfaces.nix; launch gives the container
    # this host name, so /etc/hostname and uname agree.
    networking.hostName = lib.mkDefault "claude-sandbox";
    # nixos/modules/misc/version.nix. Nothing in the container is kept
    # between runs, so there is no older state to stay compatible with.
    system.stateVersion = lib.mkDefault lib.trivial.release;
  };

  nixos = evalConfig {
    # With `pkgs` given, eval-config sets nixpkgs.pkgs and the system's
    # packages come from this very package set (claude-code allowed).
    system = pkgs.stdenv.hostPlatform.system;
    inherit pkgs;
    modules = [ containerModule ] ++ extraModules;
  };
  inherit (nixos) config;
  toplevel = config.system.build.toplevel;

  shell = "${pkgs.bashInteractive}/bin/bash";
  usrBinEnv = "${pkgs.coreutils}/bin/env";


  # What nspawn mounts read-only at /usr; it links /bin, /lib and /lib64 to
  # usr/bin, usr/lib and usr/lib64 itself (merged /usr). The loader at its
  # FHS path (spec.nixLd.path: /lib64/ld-linux-x86-64.so.2 on x86_64) is
  # nix-ld, as environment.ldso makes it on NixOS.
  root = pkgs.runCommand "claude-sandbox-container-root" { } ''
    mkdir -p $out/usr/bin $out/usr${builtins.dirOf spec.nixLd.path}
    ln -s ${shell} $out/usr/bin/sh
    ln -s ${shell} $out/usr/bin/bash
    ln -s ${usrBinEnv} $out/usr/bin/env
    ln -s ${spec.nixLd.loader} $out/usr${spec.nixLd.path}
  '';

  manifest = {
    schema = 1;
    backend = "container";
    env = "${config.system.path}";
    path = [ "${config.system.path}/bin" ];
    inherit shell usrBinEnv;
    claude = "${pkgs.claude-code}/bin/claude";
    inherit (spec) nixLd;
    hostEtc = spec.hostEtc;
    packages = spec.packageNames;
    container = {
      toplevel = "${toplevel}";
      root = "${root}";
      hostName = config.networking.hostName;
      nsenter = "${pkgs.util-linux}/bin/nsenter";
    };
  };
in
pkgs.runCommand "claude-sandbox-container" { } ''
  mkdir -p $out/share/claude-sandbox
  cp ${pkgs.writeText "manifest.json" (builtins.toJSON manifest)} $out/share/claude-sandbox/manifest.json
''
