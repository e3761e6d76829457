# What every sandbox contains, whatever the backend: the default package set
# (nixpkgs attribute names) and the host /etc files a sandbox may see.
{ pkgs, lib
  # python3Packages names a request asked for: they join pip in the
  # default set's Python environment (entry.nix says why).
, pythonLibraries ? [ ]
}:
let
  # Attribute paths, so the manifest can say by name what is inside.
  packageNames = [
    "claude-code" "chromium"
    "git" "gh" "openssh"
    "nodejs" "bun" "uv"
    "tmux" "bashInteractive" "nix"
    "coreutils" "gnugrep" "gnused" "gawk" "findutils" "diffutils" "gnupatch"
    "ripgrep" "fd" "jq" "yq-go" "less" "file" "which"
    "gnutar" "gzip" "bzip2" "xz" "zstd" "zip" "unzip"
    "curl" "wget" "rsync"
    "gnumake" "gcc" "binutils" "pkg-config"
    "procps" "lsof" "strace" "util-linux"
    "vim" "nano" "shellcheck" "gnupg" "openssl" "sqlite" "xclip"
  ];

  # Libraries that prebuilt binaries (npm native modules, pip wheels) expect,
  # served through nix-ld. A subset of the NixOS nix-ld module's defaults.
  nixLdLibraries = with pkgs; [ stdenv.cc.cc zlib zstd openssl curl bzip2 xz ];
in
{
  inherit packageNames nixLdLibraries;

  packages =
    map (name: lib.getAttrFromPath [ name ] pkgs) packageNames
    # python3 alone has no pip; withPackages is how nixpkgs adds it.
    ++ [ (pkgs.python3.withPackages (ps: map (name: ps.${name}) (lib.unique ([ "pip" ] ++ pythonLibraries)))) ];

  # The manifest's nixLd section, the same for every backend: the loader
  # shim and its libraries, laid out as the NixOS nix-ld module does it
  # (nixos/modules/programs/nix-ld.nix).
  nixLd =
    let
      libraries = pkgs.buildEnv {
        name = "claude-sandbox-nix-ld-libraries";
        paths = map lib.getLib nixLdLibraries;
        pathsToLink = [ "/lib" ];
        extraPrefix = "/share/nix-ld";
        ignoreCollisions = true;
        postBuild = "ln -s ${pkgs.stdenv.cc.bintools.dynamicLinker} $out/share/nix-ld/lib/ld.so";
      };
    in
    {
      loader = "${pkgs.nix-ld}/libexec/nix-ld";
      # Where prebuilt binaries look for the loader: the FHS path of this
      # platform's, derived as nixos/modules/config/ldso.nix derives it
      # (/lib64/ld-linux-x86-64.so.2, /lib/ld-linux-aarch64.so.1, …).
      path = "/${pkgs.stdenv.hostPlatform.libDir}/"
        + builtins.unsafeDiscardStringContext (baseNameOf pkgs.stdenv.cc.bintools.dynamicLinker);
      NIX_LD = "${libraries}/share/nix-ld/lib/ld.so";
      NIX_LD_LIBRARY_PATH = "${libraries}/share/nix-ld/lib";
    };

  # Chromium's managed policy in every sandbox: the Claude browser extension
  # (Chrome Web Store id), force-installed. The NixOS backends can pass it
  # as programs.chromium.extraOpts.
  chromiumPolicy = {
    ExtensionInstallForcelist = [ "fcoeoabgfenejglbffodgkkbkcdhcgfn;https://clients2.google.com/service/update2/crx" ];
    # The sandbox's network proxy (launch/network.go: ProxyPort), as a
    # managed policy a page or the user inside cannot change: the browser
    # obeys the sandbox's rules like every other program. "localhost" is
    # the sandbox itself (its dev servers), as for NO_PROXY.
    ProxySettings = {
      ProxyMode = "fixed_servers";
      ProxyServer = "127.0.0.1:3128";
      ProxyBypassList = "localhost";
    };
  };

  # Host /etc entries a sandbox may see, read-only, each only when present.
  hostEtc = [
    "resolv.conf" "hosts" "ssl" "ca-certificates" "pki" "fonts"
    "localtime" "zoneinfo" "locale.conf" "nix" "static" "nsswitch.conf"
  ];
}
