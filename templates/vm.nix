# The vm backend: a NixOS guest that QEMU boots straight from its kernel and
# initrd (no disk, no boot loader), evaluated with nixos/lib/eval-config.nix
# of the chosen nixpkgs, the --module files appended; and the manifest the
# Go launcher (launch/vm*.go) starts QEMU from.
#
# The boot contract between the two sides:
#   - kernel, initrd and the whole kernel command line are in the manifest;
#   - every host directory reaches the guest as a 9p share whose mount tag
#     the guest declares in fileSystems (so it is in the generated fstab and
#     mounted in stage 1); the manifest lists the tags and what backs them;
#   - the run's data (command, environment, user, terminal size) is in the
#     read-only share "csb-meta", as NUL-separated files (launch/vm_meta.go);
#   - the guest agent (./vm-agent.nix) runs the command on ttyS0 and frames
#     it with markers carrying its exit status; ttyS1 serves `enter`;
#   - the command's end powers the guest off.
#
# We do not import nixos/modules/virtualisation/qemu-vm.nix: it is built for
# its own run script (a disk image, its own shares, mkVMOverride of
# fileSystems) and we start QEMU from Go. Its lesson is kept, though: the
# mounts are declared in fileSystems here, and `mountCheck` below fails the
# build when the generated fstab lacks one, for instance because a --module
# imported qemu-vm.nix, whose fileSystems = mkVMOverride … drops them all.
{ pkgs, spec, extraPackages ? [ ], extraModules ? [ ], network ? true, evalConfig, ... }:
let
  inherit (pkgs) lib;

  # Where the shares are mounted in the guest. Not under /run: NixOS's stage
  # 1 moves its own /run tmpfs over the new root's /run after mounting.
  mnt = "/mnt/claude-sandbox";

  # tag: the 9p mount tag; source: what the launcher backs it with (see
  # manifest.VMShareSources); the store first, since everything runs from it.
  shares = [
    { tag = "nix-store"; source = "store"; target = "/nix/store"; readOnly = true; }
    { tag = "csb-meta"; source = "meta"; target = "${mnt}/meta"; readOnly = true; }
    { tag = "csb-project"; source = "project"; target = "${mnt}/project"; readOnly = false; }
    { tag = "csb-claude"; source = "claude"; target = "${mnt}/claude"; readOnly = false; }
    { tag = "csb-state"; source = "state"; target = "${mnt}/state"; readOnly = false; }
    { tag = "csb-ssh"; source = "ssh"; target = "${mnt}/ssh"; readOnly = true; }
    { tag = "csb-git"; source = "git"; target = "${mnt}/git"; readOnly = true; }
    { tag = "csb-gh"; source = "gh"; target = "${mnt}/gh"; readOnly = true; }
  ];

  # 9p options as qemu-vm.nix uses them; msize is the largest the virtio
  # transport takes (125 pages), for fewer round trips on big reads. The
  # store never changes under the guest: cache it.
  shareOptions = share:
    [ "trans=virtio" "version=9p2000.L" "msize=512000" ]
    ++ lib.optional (share.source == "store") "cache=loose"
    ++ lib.optional share.readOnly "ro";

  agent = import ./vm-agent.nix { inherit pkgs mnt; };

  # The guest's display: when QEMU gives the guest a GPU (it does when the
  # host has a display, launch/vm_qemu.go), Chromium runs full-screen in a
  # cage Wayland kiosk, as the sandbox user, with a per-project profile on
  # the state share. Without a GPU nothing of this starts.
  kioskDropIn = "/run/systemd/system/cage-tty1.service.d/claude-sandbox-user.conf";
  kiosk = pkgs.writeShellScript "claude-sandbox-kiosk" ''
    # Chromium refuses to run as root with its own sandbox; the guest is
    # the sandbox then.
    flags=()
    [ "$(${pkgs.coreutils}/bin/id -u)" = 0 ] && flags+=(--no-sandbox)
    exec ${pkgs.chromium}/bin/chromium --user-data-dir=${mnt}/state/chromium \
      --ozone-platform=wayland --kiosk --no-first-run "''${flags[@]}" about:blank
  '';
  # The sandbox user exists only once the agent made it from the metadata
  # (vm-agent.nix), so cage's User= is given then, by a runtime drop-in;
  # cage-tty1 waits for that file (its ConditionPathExists below).
  kioskUser = pkgs.writeShellScript "claude-sandbox-kiosk-user" ''
    export PATH=${lib.makeBinPath [ pkgs.coreutils ]}:/run/current-system/sw/bin
    declare -A run=()
    while IFS= read -r -d "" kv; do run[''${kv%%=*}]=''${kv#*=}; done < ${mnt}/meta/run
    uid=''${run[uid]:-}
    case $uid in ""|*[!0-9]*) echo "claude-sandbox-kiosk: bad uid in the metadata" >&2; exit 1 ;; esac
    # The uid, not the name: only digits reach the unit file.
    found=
    for _ in $(seq 600); do
      while IFS=: read -r _x _x id _x; do
        [ "$id" = "$uid" ] && found=1 && break
      done < /etc/passwd
      [ -n "$found" ] && break
      sleep 0.1
    done
    [ -n "$found" ] || { echo "claude-sandbox-kiosk: no user $uid in the guest" >&2; exit 1; }
    mkdir -p ${builtins.dirOf kioskDropIn}
    printf '[Service]\nUser=%s\n' "$uid" > ${kioskDropIn}
    systemctl daemon-reload
    systemctl start --no-block cage-tty1.service
  '';

  vmModule = { config, lib, ... }: {
    # No boot loader: QEMU loads kernel and initrd itself (-kernel, -initrd).
    # nixos/modules/system/boot/loader/grub/grub.nix
    boot.loader.grub.enable = false;

    # nixos/modules/tasks/filesystems.nix and system/boot/stage-1.nix
    # (neededForBoot: mounted by stage 1, before anything else runs). The
    # root is a fresh tmpfs each boot: nothing persists but the shares.
    fileSystems = {
      "/" = { device = "tmpfs"; fsType = "tmpfs"; options = [ "mode=0755" ]; };
    } // lib.listToAttrs (map (share: {
      name = share.target;
      value = {
        device = share.tag;
        fsType = "9p";
        options = shareOptions share;
        neededForBoot = true;
      };
    }) shares);

    # nixos/modules/system/boot/kernel.nix. virtio_pci finds the devices,
    # 9pnet_virtio and 9p mount the shares in stage 1; virtio_rng feeds the
    # guest's entropy pool from the host.
    # virtio_gpu, loaded in stage 1 as nixos/modules/profiles/qemu-guest.nix
    # does: /dev/dri/card0 must exist when cage-tty1's condition is checked
    # (below), and udev loading it later in stage 2 is too late for that.
    boot.initrd.availableKernelModules = [ "virtio_pci" "virtio_net" "virtio_rng" "9p" "9pnet_virtio" ];
    boot.initrd.kernelModules = [ "virtio_pci" "9pnet_virtio" "9p" "virtio_gpu" ];
    boot.kernelModules = [ "virtio_rng" "virtiofs" ];
    # Kernel messages reach the console while booting (the launcher takes
    # the first one as proof that the guest runs, see launch/vm.go); the
    # agent lowers the level before the command starts.
    boot.consoleLogLevel = 7;
    boot.kernelParams = [
      "console=ttyS0,115200n8"
      # A panic or a failed stage 1 ends the VM (QEMU runs with -no-reboot)
      # instead of waiting at a rescue prompt nobody sees.
      "panic=-1"
      "boot.panic_on_fail"
      # systemd's status lines would land in the command's terminal.
      "systemd.show_status=error"
    ];

    # nixos/lib/systemd-lib.nix: a disabled unit is masked. The console is
    # the command's terminal, not a login prompt (the getty generator would
    # put one there).
    systemd.services."serial-getty@ttyS0".enable = false;
    systemd.services."serial-getty@ttyS1".enable = false;

    # nixos/modules/system/boot/systemd.nix (unitConfig, serviceConfig) and
    # systemd.service(5), systemd.unit(5) for SuccessAction/FailureAction:
    # the guest exists for this command, so its end is the guest's end.
    systemd.services.claude-sandbox = {
      description = "claude-sandbox command";
      wantedBy = [ "multi-user.target" ];
      # With the network, Claude Code's first request should not race DHCP
      # (QEMU's answers at once); without, network-online is reached at once.
      wants = [ "network-online.target" ];
      after = [ "local-fs.target" "network-online.target" "systemd-user-sessions.service" ];
      unitConfig = {
        SuccessAction = "poweroff-force";
        FailureAction = "poweroff-force";
      };
      serviceConfig = {
        Type = "simple";
        ExecStart = "${agent} run";
        StandardInput = "tty-force";
        StandardOutput = "tty";
        StandardError = "tty";
        TTYPath = "/dev/ttyS0";
        TTYReset = true;
      };
    };
    systemd.services.claude-sandbox-enter = {
      description = "claude-sandbox second console";
      wantedBy = [ "multi-user.target" ];
      after = [ "claude-sandbox.service" ];
      serviceConfig = {
        Type = "simple";
        ExecStart = "${agent} enter";
        Restart = "always";
        RestartSec = 0;
        StandardInput = "tty-force";
        StandardOutput = "tty";
        StandardError = "tty";
        TTYPath = "/dev/ttyS1";
        TTYReset = true;
        TTYVHangup = true;
      };
    };

    # nixos/modules/services/wayland/cage.nix: cage-tty1 runs `program` in
    # a Wayland session of `user` on tty1 (PAM, logind), wanted by
    # graphical.target, which the module makes the default target. user is
    # replaced at run time (kioskUser above).
    services.cage = {
      enable = true;
      user = "nobody";
      program = kiosk;
      # -d: no client-side decorations; there is nothing to move the window to.
      extraArguments = [ "-d" ];
      environment.NIXOS_OZONE_WL = "1";
    };
    # systemd.unit(5): a list gives one condition per path, all must hold.
    # No GPU (QEMU ran with -display none), no kiosk; and not before the
    # user is known. A failed condition skips the unit silently, unlike a
    # failure, which would print on the console (the command's terminal).
    systemd.services."cage-tty1".unitConfig.ConditionPathExists =
      lib.mkForce [ "/dev/tty1" "/dev/dri/card0" kioskDropIn ];
    systemd.services.claude-sandbox-kiosk = {
      description = "claude-sandbox: Chromium kiosk on the guest display";
      wantedBy = [ "graphical.target" ];
      after = [ "claude-sandbox.service" ];
      unitConfig.ConditionPathExists = "/dev/dri/card0";
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${kioskUser}";
        StandardOutput = "journal";
        StandardError = "journal";
      };
    };
    # Chromium's managed policy, where programs.chromium puts it
    # (nixos/modules/programs/chromium.nix); the bubblewrap backend binds
    # the same JSON (templates/bubblewrap.nix).
    environment.etc."chromium/policies/managed/claude-sandbox.json".text = builtins.toJSON spec.chromiumPolicy;

    # nixos/modules/tasks/network-interfaces.nix. With the network, QEMU's
    # user-mode NAT answers DHCP; without it the guest has no NIC at all.
    networking.hostName = lib.mkDefault "claude-sandbox";
    networking.useDHCP = network;

    # nixos/modules/config/system-path.nix. mkBefore: on a file collision
    # the first package wins, so a --with choice overrides the default set.
    environment.systemPackages = lib.mkMerge [ (lib.mkBefore extraPackages) spec.packages ];

    # Prebuilt binaries (Claude Code among them) need a loader at the FHS
    # place: nix-ld, with the manifest's NIX_LD libraries. NixOS links
    # environment.ldso there with tmpfiles before any service starts
    # (nixos/modules/config/ldso.nix), and stub-ld, on by default
    # (nixos/modules/config/stub-ld.nix), sets it with mkDefault to a stub
    # that refuses such binaries. 900 wins over that default and yields to
    # a module's own choice (programs.nix-ld sets it plainly, to nix-ld too).
    environment.ldso = lib.mkOverride 900 spec.nixLd.loader;

    # nixos/modules/misc/version.nix. The root is fresh every boot: no older
    # state to stay compatible with.
    system.stateVersion = lib.mkDefault lib.trivial.release;
  };

  nixos = evalConfig {
    system = pkgs.stdenv.hostPlatform.system;
    inherit pkgs;
    modules = [ vmModule ] ++ extraModules;
  };
  inherit (nixos) config;
  toplevel = config.system.build.toplevel;

  # The guest's mounts as NixOS generated them (nixos/modules/tasks/
  # filesystems.nix writes environment.etc.fstab from fileSystems): every
  # share must be there under its tag, at its target, as 9p. A configuration
  # that loses one builds a VM that boots and silently mounts nothing.
  mountCheck = pkgs.runCommand "claude-sandbox-vm-mount-check" { } ''
    fstab=${toplevel}/etc/fstab
    if [ ! -e "$fstab" ]; then
      echo "claude-sandbox: the guest has no /etc/fstab ($fstab)" >&2
      exit 1
    fi
    missing=0
    check() {
      local tag=$1 target=$2 found=
      while read -r dev mnt type _; do
        if [ "$dev" = "$tag" ] && [ "$mnt" = "$target" ] && [ "$type" = 9p ]; then found=1; fi
      done < "$fstab"
      if [ -z "$found" ]; then
        echo "claude-sandbox: the guest's fstab does not mount share $tag at $target (did a module override fileSystems, e.g. by importing qemu-vm.nix?)" >&2
        missing=1
      fi
    }
    ${lib.concatMapStringsSep "\n" (s: "check ${lib.escapeShellArg s.tag} ${lib.escapeShellArg s.target}") shares}
    [ "$missing" = 0 ] || exit 1
    touch $out
  '';

  shell = "${pkgs.bashInteractive}/bin/bash";


  # QEMU and virtiofsd from this nixpkgs when it has them; the launcher
  # falls back to the host's otherwise.
  qemuArch = if pkgs.stdenv.hostPlatform.isx86_64 then "x86_64" else if pkgs.stdenv.hostPlatform.isAarch64 then "aarch64" else null;
  qemu = if pkgs ? qemu_kvm && qemuArch != null then "${pkgs.qemu_kvm}/bin/qemu-system-${qemuArch}" else null;
  virtiofsd = if pkgs ? virtiofsd then "${pkgs.virtiofsd}/bin/virtiofsd" else null;

  manifest = {
    schema = 1;
    backend = "vm";
    env = "${config.system.path}";
    path = [ "${config.system.path}/bin" ];
    inherit shell;
    usrBinEnv = "${pkgs.coreutils}/bin/env";
    claude = "${pkgs.claude-code}/bin/claude";
    inherit (spec) nixLd;
    hostEtc = [ ];
    packages = spec.packageNames;
    vm = {
      toplevel = "${toplevel}";
      # nixos/modules/system/boot/loader/loader.nix names the files;
      # qemu-vm.nix boots the same two.
      kernel = "${config.system.build.kernel}/${config.system.boot.loader.kernelFile}";
      initrd = "${config.system.build.initialRamdisk}/${config.system.boot.loader.initrdFile}";
      # As qemu-vm.nix builds -append: the configuration's parameters and
      # stage 2's entry point.
      kernelParams = config.boot.kernelParams ++ [ "init=${toplevel}/init" ];
      inherit network shares;
      memoryMiB = 2048;
      cores = 2;
      agent = "${agent}";
    } // lib.optionalAttrs (qemu != null) { inherit qemu; }
      // lib.optionalAttrs (virtiofsd != null) { inherit virtiofsd; };
  };
in
pkgs.runCommand "claude-sandbox-vm" { } ''
  mkdir -p $out/share/claude-sandbox
  # The mount check is a build input: no manifest without a passing check.
  test -e ${mountCheck}
  cp ${pkgs.writeText "manifest.json" (builtins.toJSON manifest)} $out/share/claude-sandbox/manifest.json
''
