#!/usr/bin/env bash
# The fresh-machine check: the README's set-up commands, exactly as written,
# on a freshly debootstrapped Debian 12 root holding a fresh clone of this
# checkout's HEAD. Nothing is done by hand in between; whatever the commands
# need and a fresh machine lacks, tests/run.sh must provide.
#
#   sudo tests/fresh-debian.sh            # new root, clone, both commands
#   sudo tests/fresh-debian.sh --reuse    # keep the root from last time (faster; not fresh)
#   sudo tests/fresh-debian.sh --shell    # an interactive shell in the root instead
#
# The root lives in $CLAUDE_SANDBOX_CI_DIR/fresh-bookworm (default
# /var/lib/claude-sandbox-ci). It becomes the root of new mount, PID, UTS
# and IPC namespaces (pivot_root, not chroot: the kernel refuses a chrooted
# process a user namespace, which bubblewrap needs), with the host's /sys
# and /dev bound in and a /proc of its own. Processes there keep full root
# capabilities, the host kernel's user namespaces, cgroups and /dev/kvm, as
# on a real machine (bubblewrap, systemd-nspawn and QEMU need them), while
# the root sees only its own processes (the suite looks for a running
# nix-daemon) and its own /nix. systemd-nspawn would add its own seccomp
# filter, capability bounding set and read-only /sys: what the suite tests
# would no longer be what a machine offers.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
base=${CLAUDE_SANDBOX_CI_DIR:-/var/lib/claude-sandbox-ci}
root=$base/fresh-bookworm
reuse=false shell=false
for a in "$@"; do
  case $a in
  --reuse) reuse=true ;;
  --shell) shell=true ;;
  *) echo "usage: $0 [--reuse] [--shell]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "$0: run as root" >&2; exit 1; }
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
[ -x /usr/local/go/bin/go ] || { echo "$0: no Go at /usr/local/go (a machine of this kind has it there)" >&2; exit 1; }

stamp() { date +%s; }
phase() { echo "== fresh-debian: $1 ($(($(stamp) - $2)) s)"; }

if ! $reuse || [ ! -x "$root/bin/bash" ]; then
  t=$(stamp)
  rm -rf --one-file-system "$root"
  mkdir -p "$base"
  # What a fresh Debian 12 machine of this kind has besides the base
  # system: sudo (the README's command uses it) and git (to clone).
  debootstrap --include=ca-certificates,git,sudo bookworm "$root" http://deb.debian.org/debian >"$base/fresh-debootstrap.log" 2>&1 ||
    { tail -20 "$base/fresh-debootstrap.log" >&2; exit 1; }
  cat >"$root/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  # Go is installed the way go.dev/doc/install says: /usr/local/go, on PATH.
  mkdir -p "$root/usr/local/go"
  echo 'export PATH=/usr/local/go/bin:$PATH' >"$root/etc/profile.d/go.sh"
  # The network machines of this kind sit on may intercept TLS: its CAs are
  # in the host's trust store, and a machine of this kind has them there
  # too. Carry over the certificates the host trusts beyond Debian's own,
  # the Debian way (they survive update-ca-certificates).
  awk -v stock="$root/etc/ssl/certs/ca-certificates.crt" -v out="$root/usr/local/share/ca-certificates/host-extra-" '
    BEGIN { while ((getline l < stock) > 0) { c = c l "\n"; if (l ~ /END CERT/) { have[c] = 1; c = "" } } }
    { c = c $0 "\n" }
    /END CERT/ { if (!(c in have)) { n++; printf "%s", c > (out n ".crt") } c = "" }
  ' /etc/ssl/certs/ca-certificates.crt
  chroot "$root" update-ca-certificates >/dev/null
  echo "fresh-debian" >"$root/etc/hostname"
  echo "127.0.1.1 fresh-debian" >>"$root/etc/hosts"
  phase "debootstrap bookworm" "$t"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
rm -rf "$root/root/claude-sandbox"
git clone --quiet "$repo" "$root/root/claude-sandbox"
git -C "$root/root/claude-sandbox" log --oneline -1

# The README's set-up commands: the non-comment lines of the first bash
# block after its "Set-up on a fresh Debian 12 machine" heading.
commands=$(awk '/^## Set-up on a fresh Debian 12 machine/ {s=1} s && /^```bash/ {b=1; next} b && /^```/ {exit} b && !/^#/ && NF' "$root/root/claude-sandbox/README.md")
[ -n "$commands" ] || { echo "$0: no set-up commands found in README.md" >&2; exit 1; }

inner='set -e
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
for d in sys dev; do mount --rbind "/$d" "$R/$d"; done
mount --bind -o ro /usr/local/go "$R/usr/local/go"
mount -t tmpfs tmpfs "$R/run"
hostname fresh-debian
cd "$R"
pivot_root . .
umount -l .
cd /
exec env -u R "$@"'
if $shell; then
  exec unshare --mount --pid --fork --uts --ipc env R="$root" bash -c "$inner" enter /bin/bash -l
fi
# One login shell in the clone runs them in turn, as a person would type
# them: what the first leaves running (nix-daemon) is there for the second.
script='cd /root/claude-sandbox
while IFS= read -r cmd <&3; do
  echo "== fresh-debian: \$ $cmd"
  t=$(date +%s)
  eval "$cmd" || { s=$?; echo "== fresh-debian: exit $s after $(($(date +%s) - t)) s"; exit $s; }
  echo "== fresh-debian: exit 0 after $(($(date +%s) - t)) s"
done 3<<<"$1"'
exec unshare --mount --pid --fork --uts --ipc env R="$root" bash -c "$inner" enter \
  /bin/bash -lc "$script" fresh "$commands"
