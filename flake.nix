{
  description = "claude-sandbox: Claude Code in a sandbox (bubblewrap, systemd-nspawn or QEMU) whose userland comes from nixpkgs";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      # x86_64 only, until aarch64 works and is tested: the loader path
      # comes from the platform (templates/spec.nix), but the vm backend
      # starts a q35 machine with serial consoles on ttyS0/ttyS1
      # (launch/vm_qemu.go), which qemu-system-aarch64 has not got, and no
      # test machine runs aarch64.
      systems = [ "x86_64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      version = "0.1.0-" + (self.shortRev or "dirty");

      # The Go module: everything but the Nix front door and the prose, so
      # editing those does not rebuild the binary. tests/fixtures holds no Go
      # code, so `go mod vendor` (vendorHash) sees the same packages as in
      # the whole tree.
      src = builtins.path {
        name = "claude-sandbox-source";
        path = ./.;
        filter = path: type:
          let rel = lib.removePrefix (toString ./. + "/") (toString path);
          in !(builtins.elem rel [ "flake.nix" "flake.lock" "nix" "docs" ".ci" ".git" "tests/fixtures" ]
            || lib.hasSuffix ".md" rel
            || lib.hasPrefix "result" rel);
      };

      packagesFor = pkgs: import ./nix/packages.nix { inherit pkgs nixpkgs src version; };
    in
    {
      packages = forAllSystems packagesFor;

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.default}/bin/claude-sandbox";
          meta.description = "Run Claude Code in a sandbox built from nixpkgs";
        };
      });

      # services.claude-sandbox; see nix/module.nix. A module value carries
      # no file of its own: _file names it in the module system's messages
      # (else "<unknown-file>"), and key makes a second import of the same
      # module (directly and through another flake) count once, as a module
      # imported by path does (lib/modules.nix deduplicates by key).
      nixosModules.default = {
        _file = ./nix/module.nix;
        key = toString ./nix/module.nix;
        imports = [ (import ./nix/module.nix { inherit self nixpkgs; }) ];
      };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          # Go and its language server, and the host tools the tests drive
          # (tests/run.sh installs the same on Debian).
          packages = with pkgs; [
            go_1_26 gopls
            nix bubblewrap qemu patchelf busybox util-linux
            git jq nodejs
          ];
        };
      });

      checks = forAllSystems (pkgs: import ./nix/checks.nix {
        inherit pkgs self nixpkgs src version;
      });
    };
}
