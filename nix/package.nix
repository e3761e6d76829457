# The claude-sandbox binary, with nixpkgs' buildGoModule
# (pkgs/build-support/go/module.nix). The flake calls it with its own locked
# nixpkgs as `nixpkgs`: that store path is linked into the binary as
# closure.CompiledNixpkgs, so `nix run` builds sandboxes from the same pin
# (DESIGN.md "Which nixpkgs"), and it stays a runtime reference of the
# binary, so garbage collection keeps it while the binary is installed.
{ lib
  # go.mod asks for Go 1.26; nixpkgs' default buildGoModule may still be an
  # older Go, and buildGoModule sets GOTOOLCHAIN=local (no toolchain download).
, buildGo126Module
, src
, version
, nixpkgs ? null
, pname ? "claude-sandbox"
, doCheck ? true
, subPackages ? [ "cmd/claude-sandbox" "cmd/claude-sandbox-supervisor" ]
, excludedPackages ? [ ]
}:

buildGo126Module {
  inherit pname version src doCheck subPackages excludedPackages;

  # The NAR hash of `go mod vendor` over go.mod/go.sum: what goModules, a
  # fixed-output derivation, must produce. A vendor/ directory in the tree
  # (vendorHash = null) would need re-vendoring by everyone who touches
  # go.mod, and `go build` would start ignoring the module cache. When
  # go.sum changes, `go test ./tests -run TestFlakeVendorHash -update`
  # recomputes this line (and the test fails until it is current).
  vendorHash = "sha256-wApcs6qN8N4MIx0oFfHhWNGkSStCOKQ+L2dkNKMhI/4=";

  # Static, as tests/harness_test.go builds it: no dynamic loader on every
  # launch, and no glibc reference from outside the store.
  env.CGO_ENABLED = 0;

  # nixpkgs = null (checks.go-tests): unit tests expect no compiled-in pin.
  ldflags = [
    "-s"
    "-w"
    "-X main.version=${version}"
  ] ++ lib.optional (nixpkgs != null)
    "-X github.com/claude-sandbox/claude-sandbox/closure.CompiledNixpkgs=${nixpkgs}";

  # Completions and man pages come from the binary itself (cobra), so they
  # always match its flags. Written by hand rather than with installShellFiles
  # to the same paths: share/bash-completion/completions, share/zsh/site-functions,
  # share/fish/vendor_completions.d, share/man/man1. Needs a native build
  # (the binary runs here), which is all this flake builds.
  postInstall = ''
    cs=$out/bin/claude-sandbox
    mkdir -p $out/share/bash-completion/completions $out/share/zsh/site-functions \
      $out/share/fish/vendor_completions.d $out/share/man/man1
    $cs completion bash > $out/share/bash-completion/completions/claude-sandbox
    $cs completion zsh > $out/share/zsh/site-functions/_claude-sandbox
    $cs completion fish > $out/share/fish/vendor_completions.d/claude-sandbox.fish
    # The man page generator lives in a tagged build of the same command
    # tree (cmd/claude-sandbox/man.go), kept out of the binary users run.
    go build -tags manpages -o "$TMPDIR/claude-sandbox-man" ./cmd/claude-sandbox
    "$TMPDIR/claude-sandbox-man" gen-man $out/share/man/man1
    # The original's other entry names: the binary reads the backend from
    # the name it was started by (cmd/claude-sandbox/main.go).
    ln -s claude-sandbox $out/bin/claude-sandbox-container
    ln -s claude-sandbox $out/bin/claude-sandbox-vm
  '';

  passthru = { inherit nixpkgs; };

  meta = {
    description = "Run Claude Code in a sandbox (bubblewrap, systemd-nspawn or QEMU) whose userland comes from nixpkgs";
    mainProgram = "claude-sandbox";
    platforms = [ "x86_64-linux" ];
  };
}
