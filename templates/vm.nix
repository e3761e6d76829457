# The vm backend: a NixOS guest that QEMU boots straight from its kernel and
# initrd (no boot loader), evaluated with nixos/lib/eval-config.nix of the
# chosen nixpkgs, the --module files appended; and the manifest the Go
# launcher (launch/vm) plans QEMU's command line from.
#
# The boot contract between the two sides:
#   - kernel, initrd and the whole kernel command line are in the manifest;
#   - every host directory reaches the guest as a 9p share whose mount tag
#     the guest declares in fileSystems (so it is in the generated fstab and
#     mounted in stage 1); the manifest lists the tags and what backs them;
#   - the run's data (user, environment, what to protect) and the guest
#     agent itself (the claude-sandbox binary) are in the read-only share
#     "csb-meta"; a service starts the agent, which sets the guest up and
#     serves sessions over the virtio-serial port org.claude-sandbox.agent
#     (launch/vm/agent); the serial console is the boot log only;
#   - the guest has no network card: it reaches the outside, when the run
#     allows it, only through the host supervisor's proxy, which the agent
#     offers on 127.0.0.1:3128;
#   - the guest's Nix store is an overlay: the host's store (read-only, 9p)
#     under an ext4 disk (/dev/vda, kept per project and made on the host,
#     mkfs in the manifest), which also holds the guest's /nix/var; the
#     sandbox's closure is registered in the guest's Nix database at boot
#     (regInfo, as NixOS's qemu-vm.nix does), and the guest's own
#     nix-daemon builds there: nothing reaches the host's daemon.
#
# We do not import nixos/modules/virtualisation/qemu-vm.nix: it is built for
# its own run script (a disk image, its own shares, mkVMOverride of
# fileSystems) and we start QEMU from Go. Its lessons are kept, though: the
# store overlay and the registration follow its writableStore, the mounts
# are declared in fileSystems here, and `mountCheck` below fails the build
# when the generated fstab lacks one, for instance because a --module
# imported qemu-vm.nix, whose fileSystems = mkVMOverride … drops them all.
{ pkgs, spec, extraPackages ? [ ], extraModules ? [ ], network ? true, evalConfig, ... }:
let
  inherit (pkgs) lib;

  # Where the shares are mounted in the guest. Not under /run: NixOS's stage
  # 1 moves its own /run tmpfs over the new root's /run after mounting.
  mnt = "/mnt/claude-sandbox";

  # tag: the 9p mount tag; source: what the launcher backs it with (see
  # manifest.VMShareSources); the store first, since everything runs from it.
  # The host's store is the lower layer of the guest's (qemu-vm.nix mounts
  # it at the same place for its writableStore). ~/.ssh is no share: its
  # public parts travel in the metadata share, its private keys never.
  shares = [
    { tag = "nix-store"; source = "store"; target = "/nix/.ro-store"; readOnly = true; }
    { tag = "csb-meta"; source = "meta"; target = "${mnt}/meta"; readOnly = true; }
    { tag = "csb-project"; source = "project"; target = "${mnt}/project"; readOnly = false; }
    { tag = "csb-claude"; source = "claude"; target = "${mnt}/claude"; readOnly = false; }
    { tag = "csb-state"; source = "state"; target = "${mnt}/state"; readOnly = false; }
    { tag = "csb-git"; source = "git"; target = "${mnt}/git"; readOnly = true; }
    { tag = "csb-gh"; source = "gh"; target = "${mnt}/gh"; readOnly = true; }
  ];

  # The guest's writable Nix state: the upper layers of /nix/store and of
  # /nix/var (its Nix database) on the project's store disk.
  rwStore = "/nix/.rw-store";

  # The agent: the claude-sandbox binary in the metadata share
  # (launch/vm/agent.Path).
  agentPath = "${mnt}/meta/claude-sandbox-agent";

  # What the guest's Nix database is told at boot (qemu-vm.nix's regInfo):
  # the closure of the system, whose packages are the sandbox's.
  regInfo = pkgs.closureInfo { rootPaths = [ toplevel ]; };

  # 9p options as qemu-vm.nix uses them; msize is the largest the virtio
  # transport takes (125 pages), for fewer round trips on big reads. The
  # store never changes under the guest: cache it.
  shareOptions = share:
    [ "trans=virtio" "version=9p2000.L" "msize=512000" ]
    ++ lib.optional (share.source == "store") "cache=loose"
    ++ lib.optional share.readOnly "ro";

  # The guest's display: when QEMU gives the guest a GPU (it does when the
  # host has a display, launch/vm/qemu.go), Chromium runs full-screen in a
  # cage Wayland kiosk, as the sandbox user, with a per-project profile on
  # the state share. Without a GPU nothing of this starts. The sandbox
  # user exists only once the agent made it from the metadata, so cage's
  # User= is given then, by a runtime drop-in the agent writes
  # (launch/vm/agent.KioskDropIn); cage-tty1 waits for that file.
  kioskDropIn = "/run/systemd/system/cage-tty1.service.d/claude-sandbox-user.conf";
  kiosk = pkgs.writeShellScript "claude-sandbox-kiosk" ''
    # Chromium refuses to run as root with its own sandbox; the guest is
    # the sandbox then.
    flags=()
    [ "$(${pkgs.coreutils}/bin/id -u)" = 0 ] && flags+=(--no-sandbox)
    exec ${pkgs.chromium}/bin/chromium --user-data-dir=${mnt}/state/chromium \
      --ozone-platform=wayland --kiosk --no-first-run ${lib.optionalString network "--proxy-server=http://127.0.0.1:3128"} "''${flags[@]}" about:blank
  '';

  vmModule = { config, lib, ... }: {
    # No boot loader: QEMU loads kernel and initrd itself (-kernel, -initrd).
    # nixos/modules/system/boot/loader/grub/grub.nix
    boot.loader.grub.enable = false;

    # nixos/modules/tasks/filesystems.nix and system/boot/stage-1.nix
    # (neededForBoot: mounted by stage 1, before anything else runs). The
    # root is a fresh tmpfs each boot: nothing persists but the shares and
    # the store disk.
    fileSystems = {
      "/" = { device = "tmpfs"; fsType = "tmpfs"; options = [ "mode=0755" ]; };
      # The store disk (the only one QEMU gives the guest), made on the
      # host: NixOS's scripted stage 1 formats nothing (autoFormat is
      # x-systemd.makefs, which only systemd honours).
      ${rwStore} = { device = "/dev/vda"; fsType = "ext4"; neededForBoot = true; };
      # nixos/modules/tasks/filesystems/overlayfs.nix; the layout of
      # qemu-vm.nix's writableStore, its upper layer on the disk. Stage 1
      # makes the upper and work directories.
      "/nix/store" = {
        overlay = { lowerdir = [ "/nix/.ro-store" ]; upperdir = "${rwStore}/store"; workdir = "${rwStore}/store-work"; };
        neededForBoot = true;
      };
      # The guest's Nix database and profiles outlive the VM with the
      # store they describe. An overlay rather than a bind: stage 1 makes
      # its directories, which a bind would need to exist on a fresh disk.
      "/nix/var" = {
        overlay = { lowerdir = [ "${pkgs.emptyDirectory}" ]; upperdir = "${rwStore}/var"; workdir = "${rwStore}/var-work"; };
        neededForBoot = true;
      };
    } // lib.listToAttrs (map (share: {
      name = share.target;
      value = {
        device = share.tag;
        fsType = "9p";
        options = shareOptions share;
        neededForBoot = true;
      };
    }) shares);
    # Stage 1 makes an overlay's directories 0700 (stage 2 fixes
    # /nix/store's itself): Nix clients of every user need /nix/var.
    # nixos/modules/system/boot/systemd/tmpfiles.nix; tmpfiles.d(5): d
    # adjusts the mode of a directory that exists.
    systemd.tmpfiles.rules = [ "d /nix/var 0755 root root - -" ];

    # nixos/modules/virtualisation/qemu-vm.nix: register the closure in the
    # guest's Nix database after boot; the registration's path comes on the
    # kernel command line (a reference from the system itself would be a
    # cycle). nixos/modules/system/boot/stage-2.nix runs these in bash.
    # The database outlives the VM with the store: a registration loaded
    # at an earlier boot (the same closure) is not loaded again, which
    # takes seconds under emulation.
    boot.postBootCommands = lib.mkIf config.nix.enable ''
      if [[ "$(cat /proc/cmdline)" =~ regInfo=([^ ]*) ]]; then
        reg=''${BASH_REMATCH[1]}
        done=/nix/var/nix/claude-sandbox-registered
        if [[ ! -e $done || "$(< $done)" != "$reg" ]]; then
          ${config.nix.package.out}/bin/nix-store --load-db < "$reg" && echo "$reg" > $done
        fi
      fi
    '';

    # The guest's Nix reaches the network as everything in it does: through
    # the proxy the agent offers (nixos/modules/config/networking.nix; the
    # nix-daemon service takes networking.proxy.envVars). No proxy, no
    # network: a --no-network guest's Nix has none either.
    networking.proxy.default = lib.mkIf network "http://127.0.0.1:3128";

    # <nixpkgs> in the guest (nix-shell -p, nix-build '<nixpkgs>' -A …) is
    # the nixpkgs this guest was built from, for every process whatever
    # its environment (nix.conf(5) nix-path; nixos/modules/config/nix.nix
    # writes nix.settings there). A nixpkgs that is not in the store yet
    # (a local checkout) is copied into it once, when the guest is built.
    nix.settings.nix-path = [ "nixpkgs=${pkgs.path}" ];

    # nixos/modules/system/boot/kernel.nix. virtio_pci finds the devices,
    # 9pnet_virtio and 9p mount the shares in stage 1, virtio_blk brings
    # the store disk; virtio_console the agent's port, virtio_rng feeds the
    # guest's entropy pool from the host (both as
    # nixos/modules/profiles/qemu-guest.nix loads them). virtio_gpu too, in
    # stage 1: /dev/dri/card0 must exist when cage-tty1's condition is
    # checked (below), and udev loading it later in stage 2 is too late
    # for that.
    boot.initrd.availableKernelModules = [ "virtio_pci" "virtio_blk" "virtio_rng" "9p" "9pnet_virtio" ];
    boot.initrd.kernelModules = [ "virtio_pci" "9pnet_virtio" "9p" "virtio_console" "virtio_gpu" ];
    boot.kernelModules = [ "virtio_rng" "virtiofs" ];
    # Kernel messages reach the console while booting (the supervisor
    # takes the first one as proof that the guest runs, see
    # launch/vm/vmhost); the agent lowers the level once it is up.
    boot.consoleLogLevel = 7;
    boot.kernelParams = [
      "console=ttyS0,115200n8"
      # A panic or a failed stage 1 ends the VM (QEMU runs with -no-reboot)
      # instead of waiting at a rescue prompt nobody sees.
      "panic=-1"
      "boot.panic_on_fail"
      "systemd.show_status=error"
    ];

    # nixos/lib/systemd-lib.nix: a disabled unit is masked. The console is
    # the boot log, not a login prompt (the getty generator would put one
    # there).
    systemd.services."serial-getty@ttyS0".enable = false;

    # nixos/modules/system/boot/systemd.nix (unitConfig, serviceConfig) and
    # systemd.service(5), systemd.unit(5) for SuccessAction/FailureAction:
    # the guest exists for its agent's sessions; the agent ends when QEMU's
    # side of its port does, and the guest with it. On a power-down the
    # agent stays (it ignores SIGTERM) until its sessions' commands have
    # ended and it has reported how; TimeoutStopSec bounds that.
    systemd.services.claude-sandbox-agent = {
      description = "claude-sandbox guest agent";
      wantedBy = [ "multi-user.target" ];
      after = [ "local-fs.target" "nix-daemon.socket" ];
      unitConfig = {
        SuccessAction = "poweroff-force";
        FailureAction = "poweroff-force";
      };
      serviceConfig = {
        Type = "simple";
        ExecStart = agentPath;
        StandardOutput = "journal+console";
        StandardError = "journal+console";
        TimeoutStopSec = 15;
      };
    };

    # nixos/modules/services/wayland/cage.nix: cage-tty1 runs `program` in
    # a Wayland session of `user` on tty1 (PAM, logind), wanted by
    # graphical.target, which the module makes the default target. user is
    # replaced at run time (kioskDropIn above).
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
    # user is known. A failed condition skips the unit silently.
    systemd.services."cage-tty1".unitConfig.ConditionPathExists =
      lib.mkForce [ "/dev/tty1" "/dev/dri/card0" kioskDropIn ];
    # Chromium's managed policy, where programs.chromium puts it
    # (nixos/modules/programs/chromium.nix); the bubblewrap backend binds
    # the same JSON (templates/bubblewrap.nix).
    environment.etc."chromium/policies/managed/claude-sandbox.json".text = builtins.toJSON spec.chromiumPolicy;

    # nixos/modules/tasks/network-interfaces.nix. No network card, so
    # nothing to configure.
    networking.hostName = lib.mkDefault "claude-sandbox";
    networking.useDHCP = false;

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
      kernelParams = config.boot.kernelParams ++ [ "init=${toplevel}/init" "regInfo=${regInfo}/registration" ];
      inherit network shares;
      memoryMiB = 2048;
      cores = 2;
      mkfs = "${pkgs.e2fsprogs}/bin/mkfs.ext4";
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
