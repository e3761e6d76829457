# nixosModules.default: services.claude-sandbox, with the original project's
# options under the same names and meaning (enable, container.enable,
# vm.enable, network, bubblewrap.extraPackages, container.extraModules,
# vm.extraModules), plus package, prebuild and users.
#
# How package and module values get into a sandbox: `--with` takes nixpkgs
# attribute paths, but bubblewrap.extraPackages holds packages and
# *.extraModules hold NixOS modules. So the module builds those closures
# itself, from the same templates/ (nix/sandboxes.nix fromValues, which the
# flake's checks hold equal to what the binary builds), and the entry
# commands hand them to the binary with --prebuilt. They are built with the
# system, so the first launch is warm. Everything else (--with, --module, the
# subcommands) works as with the plain binary.
#
# Options set here, checked against nixpkgs' module sources:
#   security.allowUserNamespaces, security.unprivilegedUsernsClone
#     (nixos/modules/security/misc.nix)
#   users.groups.<name>.members, the kvm group (nixos/modules/config/users-groups.nix)
#   environment.systemPackages (nixos/modules/config/system-path.nix)
#   assertions (nixos/modules/misc/assertions.nix)
{ self, nixpkgs }:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.claude-sandbox;
  system = pkgs.stdenv.hostPlatform.system;

  # Sandboxes come from the flake's nixpkgs input, the one compiled into the
  # binary, so a prebuilt closure is what the binary would build for that
  # configuration. `inputs.claude-sandbox.inputs.nixpkgs.follows = "nixpkgs"`
  # makes that the system's own nixpkgs.
  sandboxes = pkgs.callPackage ./sandboxes.nix { nixpkgs = "${nixpkgs}"; inherit system; };
  wrapper = pkgs.callPackage ./wrapper.nix { inherit sandboxes; };

  backends = [ "bubblewrap" ]
    ++ lib.optional cfg.container.enable "container"
    ++ lib.optional cfg.vm.enable "vm";

  closureOf = backend: sandboxes.fromValues {
    inherit backend;
    inherit (cfg) network;
    extraPackages = lib.optionals (backend == "bubblewrap") cfg.bubblewrap.extraPackages;
    extraModules =
      if backend == "container" then cfg.container.extraModules
      else if backend == "vm" then cfg.vm.extraModules
      else [ ];
  };

  closures = lib.optionals cfg.prebuild
    (map (backend: { inherit backend; inherit (cfg) network; closure = closureOf backend; }) backends);

  entry = name: backendArgs: wrapper {
    inherit name closures;
    claude-sandbox = cfg.package;
    args = backendArgs ++ lib.optional (!cfg.network) "--no-network";
  };

  hasValues = cfg.bubblewrap.extraPackages != [ ] || cfg.container.extraModules != [ ] || cfg.vm.extraModules != [ ];
in
{
  options.services.claude-sandbox = {
    enable = lib.mkEnableOption "claude-sandbox, Claude Code in a bubblewrap sandbox built from nixpkgs (`claude-sandbox` on PATH)";

    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${system}.default;
      defaultText = lib.literalExpression "claude-sandbox.packages.\${system}.default";
      description = "The claude-sandbox binary the entry commands run.";
    };

    network = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Whether sandboxes have network access. When false, the entry commands
        pass `--no-network` (bubblewrap and the container get no network
        namespace of the host, the VM guest is built without a NIC).
      '';
    };

    prebuild = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Whether to build the configured sandbox closures with the system, so
        that the first launch is warm and runs no Nix evaluation. When false,
        each closure is built on its first launch instead (and cached per
        user); package and module values (bubblewrap.extraPackages,
        container.extraModules, vm.extraModules) then cannot be used.
      '';
    };

    users = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "alice" ];
      description = ''
        Users added to the `kvm` group, so that the VM backend can use
        hardware acceleration (`/dev/kvm`) instead of emulation.
      '';
    };

    bubblewrap.extraPackages = lib.mkOption {
      type = lib.types.listOf lib.types.package;
      default = [ ];
      example = lib.literalExpression "with pkgs; [ python3 nodejs ]";
      description = "Extra packages inside the bubblewrap sandbox, on its PATH before the default set.";
    };

    container = {
      enable = lib.mkEnableOption "the systemd-nspawn container backend (`claude-sandbox-container`, run as root, e.g. with sudo)";
      extraModules = lib.mkOption {
        type = lib.types.listOf lib.types.deferredModule;
        default = [ ];
        example = lib.literalExpression "[ { environment.systemPackages = with pkgs; [ python3 ]; } ]";
        description = "Extra NixOS modules for the container's system.";
      };
    };

    vm = {
      enable = lib.mkEnableOption "the QEMU VM backend (`claude-sandbox-vm`; KVM recommended, see `users`)";
      extraModules = lib.mkOption {
        type = lib.types.listOf lib.types.deferredModule;
        default = [ ];
        example = lib.literalExpression "[ { environment.systemPackages = with pkgs; [ python3 ]; } ]";
        description = "Extra NixOS modules for the VM guest's system.";
      };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.prebuild || !hasValues;
        message = ''
          services.claude-sandbox: bubblewrap.extraPackages, container.extraModules and vm.extraModules
          are Nix values that only a prebuilt sandbox can carry; keep services.claude-sandbox.prebuild = true,
          or name packages at launch instead (claude-sandbox --with python3).
        '';
      }
    ];

    # bubblewrap is unprivileged: it needs user namespaces. An explicit
    # `false` elsewhere is a conflict, on purpose: the sandbox cannot work
    # without them.
    security.allowUserNamespaces = true;
    # Only hardened kernels read this (kernel.unprivileged_userns_clone,
    # nixos/modules/security/misc.nix). nixos/modules/profiles/hardened.nix
    # sets it with mkDefault (1000) to virtualisation.containers.enable,
    # usually false; a plain definition is 100. 900 lies between: it wins
    # over the profile without a conflict, and a user's own setting still
    # wins over it.
    security.unprivilegedUsernsClone = lib.mkOverride 900 true;

    users.groups.kvm.members = lib.mkIf cfg.vm.enable cfg.users;

    # The entry commands, then the binary (for its completions and man
    # pages). The binary has all three entry names too; the configured entry
    # commands win (lib.hiPrio), so `claude-sandbox` launches the prebuilt
    # closures. Where vm or container is not enabled, the binary's own
    # claude-sandbox-vm / -container stay: they build on first use.
    environment.systemPackages =
      map lib.hiPrio (
        [ (entry "claude-sandbox" [ ]) ]
        ++ lib.optional cfg.container.enable (entry "claude-sandbox-container" [ "--backend" "container" ])
        ++ lib.optional cfg.vm.enable (entry "claude-sandbox-vm" [ "--backend" "vm" ])
      )
      ++ [ cfg.package ];
  };
}
