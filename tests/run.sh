#!/usr/bin/env bash
# The full test suite on a fresh Debian 12 machine, as root: installs the
# host tools, configures Nix for an offline machine, starts nix-daemon, then
# runs every test as root and the end-to-end tests again as an unprivileged
# user (bubblewrap's real users are not root).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if [ "$(id -u)" != 0 ]; then
  echo "tests/run.sh: run as root (sudo tests/run.sh): it installs packages and starts nix-daemon" >&2
  exit 1
fi
export PATH="/usr/local/go/bin:$PATH"

# Host packages: the tools claude-sandbox drives, and the host programs the
# offline package set (tests/fixtures/nixpkgs) wraps.
mapfile -t fixture_pkgs < <(grep -Ev '^\s*(#|$)' tests/fixtures/host-packages.txt)
wanted=(nix-bin nix-setup-systemd bubblewrap systemd-container busybox-static patchelf util-linux "${fixture_pkgs[@]}")
# doctor's KVM check boots a real kernel with QEMU (tests/doctor_test.go);
# the vm backend's tests boot the fixture's guest (that kernel, its modules
# resolved with kmod's modprobe) under QEMU (tests/vm_test.go).
wanted+=(qemu-system-x86 linux-image-amd64 kmod)
# The VM's window (tests/vm_display_test.go): QEMU's gtk/sdl display modules,
# a virtual X server, and xwininfo to see the window.
wanted+=(qemu-system-gui xvfb x11-utils)
# The egress proxy's tests run OpenSSH through the ProxyCommands people use
# (egress/ssh_test.go): OpenBSD netcat's `nc -X 5` and connect-proxy.
wanted+=(netcat-openbsd connect-proxy)
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm: the machine's own Node.js usually brings it; Debian's only if not.
if ! command -v npm >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

# The real Claude Code, from npm; the fixture's claude-code package wraps it.
claude_dir=/opt/claude-sandbox-ci
if [ ! -x "$claude_dir/node_modules/@anthropic-ai/claude-code-linux-x64/claude" ]; then
  echo "== installing @anthropic-ai/claude-code into $claude_dir"
  mkdir -p "$claude_dir"
  npm install --silent --no-audit --no-fund --prefix "$claude_dir" @anthropic-ai/claude-code >/dev/null
fi

# Nix for an offline machine: no binary cache (every build would first retry
# it for seconds), flakes on.
# nix-setup-systemd's tmpfiles rule (the daemon socket's directory, group
# nix-users), applied by hand where systemd is not running.
systemd-tmpfiles --create /usr/lib/tmpfiles.d/nix-daemon.conf
conf=/etc/nix/nix.conf
grep -q '^substituters *=' "$conf" 2>/dev/null || echo 'substituters =' >>"$conf"
grep -q '^experimental-features' "$conf" 2>/dev/null || echo 'experimental-features = nix-command flakes' >>"$conf"
if ! pgrep -x nix-daemon >/dev/null; then
  echo "== starting nix-daemon"
  nohup nix-daemon >/var/log/nix-daemon.log 2>&1 &
fi
for _ in $(seq 100); do [ -S /nix/var/nix/daemon-socket/socket ] && break; sleep 0.1; done
[ -S /nix/var/nix/daemon-socket/socket ] || { echo "nix-daemon did not start; see /var/log/nix-daemon.log" >&2; exit 1; }

# The unprivileged user, in nix-users so it may reach the daemon socket.
user=csbtest
id "$user" >/dev/null 2>&1 || useradd --create-home --groups nix-users "$user"
usermod -aG nix-users "$user"

export CI="${CI:-true}"
status=0
echo "== go vet, gofmt, staticcheck"
go vet ./... || status=1
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './vendor/*'))
[ -z "$unformatted" ] || { echo "not gofmt'ed: $unformatted" >&2; status=1; }
# Pinned, from the module proxy: a new release's new checks must not turn
# an unchanged tree red.
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./... || status=1
echo "== all tests, as root"
go test -count=1 -timeout 30m ./... || status=1

echo "== end-to-end tests, as $user"
copy=$(mktemp -d /tmp/claude-sandbox-unprivileged.XXXXXX)
cp -a "$repo/." "$copy/"
chown -R "$user:" "$copy"
runuser -u "$user" -- env -i HOME="/home/$user" USER="$user" PATH="/usr/local/go/bin:/usr/bin:/bin" \
  CI="$CI" CLAUDE_SANDBOX_TEST_UNPRIVILEGED_PASS=1 GOFLAGS=-mod=mod \
  bash -c "cd '$copy' && go test -count=1 -timeout 30m ./tests/..." || status=1
rm -rf "$copy"
exit $status
