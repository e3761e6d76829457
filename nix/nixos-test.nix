# NixOS VM test of nixosModules.default (checks.<system>.nixos-module), for
# machines that can fetch nixpkgs and run QEMU: `nix flake check`. One boot:
# the bubblewrap sandbox as a normal user (with an extra package value, no
# network), the container as root, and the VM backend's prebuilt guest on
# PATH (booting a VM inside the test VM would need nested KVM).
{ self }:
{
  name = "claude-sandbox-module";

  nodes.machine = { pkgs, ... }: {
    imports = [ self.nixosModules.default ];

    services.claude-sandbox = {
      enable = true;
      container.enable = true;
      vm.enable = true;
      network = false;
      users = [ "alice" ];
      bubblewrap.extraPackages = [ pkgs.hello ];
      container.extraModules = [ { environment.etc."claude-sandbox-test".text = "from an extra module"; } ];
    };

    users.users.alice.isNormalUser = true;
    virtualisation.memorySize = 3072;
    virtualisation.diskSize = 8192;
  };

  testScript = ''
    machine.wait_for_unit("multi-user.target")

    with subtest("the entry commands and the man page are installed"):
        machine.succeed("command -v claude-sandbox claude-sandbox-container claude-sandbox-vm")
        machine.succeed("man -w claude-sandbox")

    with subtest("bubblewrap: a normal user, the prebuilt closure, the extra package, no network"):
        machine.succeed("su - alice -c 'mkdir -p ~/project'")
        out = machine.succeed(
            "su - alice -c 'cd ~/project && claude-sandbox exec . -- sh -c \"hello > greeting; cat /proc/net/dev\"' 2>&1"
        )
        assert "building" not in out, f"the first launch built something: {out}"
        interfaces = [l.split(":")[0].strip() for l in out.splitlines() if ":" in l and "|" not in l]
        assert interfaces == ["lo"], f"network = false, yet the sandbox sees {interfaces}: {out}"
        machine.succeed("grep -q 'Hello, world!' /home/alice/project/greeting")

    with subtest("container: root, the extra module is in the guest system"):
        machine.succeed("mkdir -p /root/project")
        machine.succeed(
            "claude-sandbox-container exec /root/project -- sh -c 'cat /etc/claude-sandbox-test > seen'"
        )
        machine.succeed("grep -q 'from an extra module' /root/project/seen")

    with subtest("vm: the guest is prebuilt and alice may use KVM"):
        machine.succeed("su - alice -c 'id -nG' | grep -qw kvm")
        machine.succeed("claude-sandbox-vm --help")
  '';
}
