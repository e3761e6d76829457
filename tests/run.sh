#!/usr/bin/env bash
# The full test suite on a fresh Debian 12 machine, as root: installs the
# host tools (Debian packages only), configures Nix for an offline machine,
# starts nix-daemon, then runs the suite in two passes, one per Nix:
#   1. Debian 12's Nix (the host's nix-bin 2.8): every test as root, the
#      end-to-end tests and the daemon client's live tests again as an
#      unprivileged user (bubblewrap's real users are not root);
#   2. a current Nix (Debian 13's nix-bin, tests/nix-root.sh) with a store
#      and daemon of its own: the same, in a mount namespace where /nix is
#      that store and every nix-* program is that Nix.
# docs/testing.md describes the passes and how to run one test.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if [ "$(id -u)" != 0 ]; then
  echo "tests/run.sh: run as root (sudo tests/run.sh): it installs packages and starts nix-daemon" >&2
  exit 1
fi
export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "tests/run.sh: no Go toolchain (expected at /usr/local/go, see go.dev/doc/install)" >&2; exit 1; }

start=$SECONDS phase_start=$SECONDS phase_name="" summary=()
phase() {
  [ -z "$phase_name" ] || summary+=("$(printf '%5d s  %s' $((SECONDS - phase_start)) "$phase_name")")
  phase_name=$1 phase_start=$SECONDS
  [ -z "$1" ] || echo "== $1"
}

phase "host packages"
# The tools claude-sandbox drives, and the host programs the offline package
# set (tests/fixtures/nixpkgs) wraps. nix-setup-systemd is Debian's set-up
# of nix-bin (groups nix-users and nixbld, build users, /etc/nix/nix.conf,
# the daemon socket's tmpfiles rule); apt installs it only as a Recommends.
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
# The SSH agent filter's tests sign through a real sshd (sshagent/sshd_test.go).
wanted+=(openssh-server)
# The second Nix's root (tests/nix-root.sh).
wanted+=(debootstrap)
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# npm: the machine's own Node.js usually brings it; Debian's only if not.
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The second Nix's root takes minutes to download: it is made while the
# first pass runs (nothing of the first pass uses it). Cached across runs.
nixroot_log=$(mktemp /tmp/claude-sandbox-nix-root.XXXXXX.log)
tests/nix-root.sh ensure >"$nixroot_log" 2>&1 &
nixroot_pid=$!

phase "Claude Code from npm"
# The real Claude Code; the fixture's claude-code package wraps it.
claude_dir=/opt/claude-sandbox-ci
if [ ! -x "$claude_dir/node_modules/@anthropic-ai/claude-code-linux-x64/claude" ]; then
  mkdir -p "$claude_dir"
  npm install --silent --no-audit --no-fund --prefix "$claude_dir" @anthropic-ai/claude-code >/dev/null
fi

phase "Nix set-up, nix-daemon, the unprivileged user"
# nix-setup-systemd's tmpfiles rule (the daemon socket's directory, group
# nix-users), applied by hand where systemd is not running.
systemd-tmpfiles --create /usr/lib/tmpfiles.d/nix-daemon.conf
# An offline machine: no binary cache (every build would first retry it
# for seconds); flakes on.
conf=/etc/nix/nix.conf
grep -q '^substituters *=' "$conf" 2>/dev/null || echo 'substituters =' >>"$conf"
grep -q '^experimental-features' "$conf" 2>/dev/null || echo 'experimental-features = nix-command flakes' >>"$conf"
if ! pgrep -x nix-daemon >/dev/null; then
  echo "starting nix-daemon"
  nohup nix-daemon >/var/log/nix-daemon.log 2>&1 &
fi
for _ in $(seq 100); do [ -S /nix/var/nix/daemon-socket/socket ] && break; sleep 0.1; done
[ -S /nix/var/nix/daemon-socket/socket ] || { echo "nix-daemon did not start; see /var/log/nix-daemon.log" >&2; exit 1; }
# The unprivileged user, in nix-users so it may reach the daemon socket.
user=csbtest
id "$user" >/dev/null 2>&1 || useradd --create-home --groups nix-users "$user"
usermod -aG nix-users "$user"

export CI="${CI:-true}"
status=0 results=()
result() { # result NAME COMMAND...: run a step, remember its outcome
  local name=$1
  shift
  if "$@"; then results+=("ok    $name"); else results+=("FAIL  $name"); status=1; fi
}

phase "go vet, gofmt, staticcheck"
lint() {
  local s=0 unformatted
  go vet ./... || s=1
  unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './vendor/*'))
  [ -z "$unformatted" ] || { echo "not gofmt'ed: $unformatted" >&2; s=1; }
  # Pinned, from the module proxy: a new release's new checks must not turn
  # an unchanged tree red.
  go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./... || s=1
  return $s
}
result "go vet, gofmt, staticcheck" lint

# The unprivileged runs use a copy the user owns.
copy=$(mktemp -d /tmp/claude-sandbox-unprivileged.XXXXXX)
trap 'rm -rf "$copy" "$nixroot_log"' EXIT
cp -a "$repo/." "$copy/"
chown -R "$user:" "$copy"

# which_nix: the Nix every nix-* program here is, and the daemon protocol
# the native client negotiates with the daemon at the default socket.
which_nix() {
  local handshake
  handshake=$(go test -count=1 -v -run '^TestRealHandshake$' ./nixdaemon 2>&1 | grep -o 'daemon offers .*' || true)
  echo "$(nix-store --version), ${handshake:-no daemon handshake (see the nixdaemon tests)}"
}

# pass NAME [PREFIX...]: the suite as root, then the end-to-end tests and
# the daemon client's live tests as the unprivileged user, each run under
# PREFIX (nothing for the host's Nix; tests/nix-root.sh run for the other).
pass() {
  local name=$1
  shift
  phase "$name: which Nix"
  "$@" env PATH="$PATH" bash -c "$(declare -f which_nix); which_nix" | sed 's/^/   /'
  phase "$name: all tests, as root"
  result "$name, as root" "$@" env PATH="$PATH" CI="$CI" go test -count=1 -timeout 30m ./...
  phase "$name: end-to-end and live daemon tests, as $user"
  result "$name, as $user" "$@" runuser -u "$user" -- env -i HOME="/home/$user" USER="$user" \
    PATH="/usr/local/go/bin:/usr/bin:/bin" CI="$CI" CLAUDE_SANDBOX_TEST_UNPRIVILEGED_PASS=1 GOFLAGS=-mod=mod \
    bash -c "cd '$copy' && go test -count=1 -timeout 30m ./tests/... ./nixdaemon/..."
}

pass "pass 1: Debian 12's Nix (host)"

phase "second Nix: install (cached), start its daemon"
wait "$nixroot_pid" || true
cat "$nixroot_log"
# Restarted, so that its nix.conf is this checkout's.
if tests/nix-root.sh stop main && tests/nix-root.sh start main >/dev/null; then
  pass "pass 2: Debian 13's Nix (tests/nix-root.sh)" tests/nix-root.sh run main --
else
  results+=("FAIL  pass 2: the second Nix could not be installed or started")
  status=1
fi
phase ""

echo "== phases"
printf '%s\n' "${summary[@]}"
printf '%5d s  total\n' $((SECONDS - start))
echo "== results"
printf '%s\n' "${results[@]}"
exit $status
