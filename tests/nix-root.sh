#!/usr/bin/env bash
# A second Nix beside the host's: Debian 13 ("trixie")'s nix-bin, with
# stores of its own, for the suite's second pass and for tests that need a
# current Nix or an empty store with a daemon of its own. Run as root.
#
#   tests/nix-root.sh ensure                 install the second Nix (cached; rebuilt when absent
#                                            or when its recipe below changed); prints its version
#   tests/nix-root.sh start [STORE] [--fresh] [--this-nix] [--conf LINE]...
#                                            start STORE's daemon (default store: main), creating
#                                            the store if absent (--fresh: empty it first); LINEs
#                                            are added to its nix.conf; prints the daemon's socket.
#                                            --this-nix: a new store for the Nix the caller runs
#                                            (the host's, or the second Nix inside `run`), not for
#                                            the second Nix
#   tests/nix-root.sh run [STORE] -- CMD...  run CMD where /nix is STORE and Nix is the second Nix
#   tests/nix-root.sh socket [STORE]         the daemon's socket, as the host sees it
#   tests/nix-root.sh stop [STORE]           stop STORE's daemon
#   tests/nix-root.sh destroy [STORE]        stop it and remove the store
#   tests/nix-root.sh version                the second Nix's version ("2.26.3")
#
# How: the second Nix is installed with apt into a debootstrapped trixie root
# ($CLAUDE_SANDBOX_CI_DIR/nix-trixie/root, default /var/lib/claude-sandbox-ci),
# so the host's own libraries are never replaced. `run` and the daemon use
# it from a private mount namespace of the host in which
#   /nix      is the store's own directory (two Nix versions never share a store database),
#   /etc/nix  is the store's own configuration,
#   /usr/bin/nix (which every nix-* command links to) is a wrapper that runs
#             the trixie binary with the trixie root's loader and libraries.
# Everything else is the host: the same bubblewrap, systemd-nspawn, QEMU and
# the host programs the offline package set wraps, so a difference between
# the two passes is Nix's. The stores live under .../nix-trixie/stores/STORE.
set -euo pipefail

base=${CLAUDE_SANDBOX_CI_DIR:-/var/lib/claude-sandbox-ci}/nix-trixie
root=$base/root
mirror=http://deb.debian.org/debian
# The recipe: what the installation is made of. Any change rebuilds it.
recipe="suite=trixie variant=minbase packages=nix-bin mirror=$mirror layout=1"

die() { echo "nix-root.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it installs Nix into $root and mounts in a namespace of its own)"

recipe_id() { printf '%s' "$recipe" | sha256sum | cut -c1-16; }

installed() { [ -f "$base/recipe" ] && [ "$(cat "$base/recipe")" = "$(recipe_id)" ]; }

# The wrapper runs the trixie binary with the trixie root's loader and
# libraries (Debian's nix is one binary, its libraries all in one
# directory). Rewritten atomically on every ensure: it is cheap, and a
# wrapper from an older version of this script must not survive.
libdir() { echo "$root/usr/lib/x86_64-linux-gnu"; }
write_wrapper() {
  mkdir -p "$base/bin"
  cat >"$base/bin/.nix.new" <<WRAPPER
#!/bin/sh
# tests/nix-root.sh: Debian 13's Nix, run with its own loader and libraries
# (the host's are older). --argv0 keeps the name it was called by: nix is
# also nix-store, nix-daemon, nix-instantiate… by that name. NIX_BIN_DIR:
# Nix finds itself there to run its build hook (nix __build-remote), not at
# its own executable (the loader); nix.conf's build-hook does not override it.
NIX_BIN_DIR=$base/bin exec $root/usr/lib64/ld-linux-x86-64.so.2 --inhibit-cache --library-path $(libdir) --argv0 "\$0" $root/usr/bin/nix "\$@"
WRAPPER
  chmod 755 "$base/bin/.nix.new"
  # Replaced only when it changed: a namespace that bound the old one over
  # /usr/bin/nix would otherwise hold a deleted file that nothing can be
  # mounted on (a store started from inside the second pass).
  if cmp -s "$base/bin/.nix.new" "$base/bin/nix"; then
    rm -f "$base/bin/.nix.new"
  else
    mv -f "$base/bin/.nix.new" "$base/bin/nix"
  fi
  for n in nix-build nix-channel nix-collect-garbage nix-copy-closure nix-daemon nix-env nix-hash \
    nix-instantiate nix-prefetch-url nix-shell nix-store; do
    [ -L "$base/bin/$n" ] || ln -sfn nix "$base/bin/$n"
  done
}

# One installer at a time (tests/run.sh installs in the background while
# tests may already ask for a store): the others wait for it.
ensure() {
  mkdir -p "$base"
  exec 9>"$base/.lock"
  flock 9
  installed || install_root
  write_wrapper
  exec 9>&-
}

install_root() {
  local t=$SECONDS
  echo "== nix-root: installing Debian 13's nix-bin into $root" >&2
  command -v debootstrap >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  local st
  for st in "$base"/stores/*/; do [ -d "$st" ] && stop "$(basename "$st")"; done
  rm -rf --one-file-system "$root" "$base/bin" "$base/recipe"
  mkdir -p "$base"
  debootstrap --variant=minbase trixie "$root" "$mirror" >"$base/debootstrap.log" 2>&1 ||
    { tail -20 "$base/debootstrap.log" >&2; die "debootstrap trixie failed; see $base/debootstrap.log"; }
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  unshare --mount --pid --fork -- sh -c '
    mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" &&
    DEBIAN_FRONTEND=noninteractive chroot "$1" apt-get install -y -qq --no-install-recommends nix-bin' \
    sh "$root" >"$base/apt.log" 2>&1 ||
    { tail -20 "$base/apt.log" >&2; die "installing nix-bin in $root failed; see $base/apt.log"; }
  # Every library from the root, none from the host.
  local deps
  deps=$("$root/usr/lib64/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$(libdir)" --list "$root/usr/bin/nix")
  if grep '=>' <<<"$deps" | grep -qv "=> $root/"; then
    die "the second Nix would load host libraries:"$'\n'"$deps"
  fi
  write_wrapper
  "$base/bin/nix" --version >/dev/null || die "the second Nix does not run"
  recipe_id >"$base/recipe"
  echo "== nix-root: $("$base/bin/nix" --version) installed in $((SECONDS - t)) s" >&2
}

store_dir() { echo "$base/stores/$1"; }
socket() { echo "$(store_dir "$1")/nix/var/nix/daemon-socket/socket"; }
# A process's start time (field 22 of /proc/PID/stat), which tells it from
# a later process that reuses its pid.
proc_start() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
# The pid of STORE's daemon if it runs (daemon.pid holds "PID START").
daemon_pid() {
  local f pid start
  f="$(store_dir "$1")/daemon.pid"
  [ -f "$f" ] && read -r pid start <"$f" && [ -n "$start" ] && [ "$(proc_start "$pid")" = "$start" ] && echo "$pid"
}

# The namespace: the store at /nix, its configuration at /etc/nix, and the
# second Nix wherever the host's is looked for.
in_namespace() {
  local s
  s=$(store_dir "$1")
  shift
  [ -d "$s/nix" ] || die "no store $(basename "$s") (tests/nix-root.sh start $(basename "$s"))"
  mkdir -p /nix /etc/nix
  local bin=$base/bin
  [ -e "$s/this-nix" ] && bin=
  exec unshare --mount --propagation private -- env NIXROOT_STORE="$s" NIXROOT_BIN="$bin" bash -c '
    set -e
    mount --bind "$NIXROOT_STORE/nix" /nix
    mount --bind "$NIXROOT_STORE/etc-nix" /etc/nix
    if [ -n "$NIXROOT_BIN" ]; then
      if [ -e /usr/bin/nix ]; then mount --bind "$NIXROOT_BIN/nix" /usr/bin/nix; fi
      export PATH="$NIXROOT_BIN:$PATH"
    fi
    unset NIXROOT_STORE NIXROOT_BIN
    exec "$@"' nix-root "$@"
}

start() {
  local name=main fresh=false this_nix=false conf=()
  while [ $# -gt 0 ]; do
    case $1 in
    --fresh) fresh=true ;;
    --this-nix) this_nix=true ;;
    --conf) conf+=("$2"); shift ;;
    -*) die "start: unknown option $1" ;;
    *) name=$1 ;;
    esac
    shift
  done
  valid_name "$name"
  local sock
  sock=$(socket "$name")
  [ ${#sock} -lt 108 ] || die "store name $name too long: its socket path $sock passes the 107 bytes a Unix socket address holds"
  local s
  s=$(store_dir "$name")
  if $this_nix; then
    $fresh || die "start: --this-nix makes a new store: add --fresh"
    command -v nix-daemon >/dev/null || die "start --this-nix: no nix-daemon on PATH"
  else
    ensure
  fi
  if $fresh; then stop "$name"; rm -rf --one-file-system "$s"; fi
  if [ -n "$(daemon_pid "$name")" ]; then
    [ ${#conf[@]} = 0 ] || die "store $name's daemon already runs; stop it to change its configuration"
    socket "$name"
    return
  fi
  # What Debian's nix-setup-systemd does for the host's store: its tmpfiles
  # rule (the socket's directory for group nix-users only, per-user roots
  # and profiles), and a nix.conf for this test machine.
  getent group nix-users >/dev/null || die "no group nix-users (install nix-setup-systemd, as tests/run.sh does)"
  install -d -m 755 "$s/nix" "$s/etc-nix" "$s/nix/var/nix/gcroots" "$s/nix/var/nix/profiles"
  install -d -m 770 -g nix-users "$s/nix/var/nix/daemon-socket"
  install -d -m 1777 "$s/nix/var/nix/gcroots/per-user" "$s/nix/var/nix/profiles/per-user"
  if $this_nix; then touch "$s/this-nix"; fi
  {
    echo "# tests/nix-root.sh: store $name of the second Nix"
    # No build users: the host's daemon runs its builders as nixbld1..N,
    # and a Nix daemon kills every process of a build user before it
    # starts a build as that user — two daemons sharing them kill each
    # other's builders ("failed due to signal 9"). These stores' builders
    # run as the daemon's own user instead.
    echo "build-users-group ="
    # The offline package set wraps host programs: its builders must see them.
    echo "sandbox = false"
    echo "substituters ="
    echo "experimental-features = nix-command flakes"
    for l in "${conf[@]}"; do echo "$l"; done
  } >"$s/etc-nix/nix.conf"
  rm -f "$(socket "$name")"
  local pid
  pid=$(in_namespace "$name" setsid nix-daemon </dev/null >"$s/daemon.log" 2>&1 & echo $!)
  echo "$pid $(proc_start "$pid")" >"$s/daemon.pid"
  for _ in $(seq 100); do [ -S "$(socket "$name")" ] && break; sleep 0.1; done
  [ -S "$(socket "$name")" ] || { cat "$s/daemon.log" >&2; die "store $name's daemon did not start; see $s/daemon.log"; }
  socket "$name"
}

stop() {
  local pid
  pid=$(daemon_pid "$1") || return 0
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$(store_dir "$1")/daemon.pid"
}

valid_name() { [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "bad store name '$1'"; }

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
ensure) ensure; "$base/bin/nix" --version ;;
version) installed || die "not installed (tests/nix-root.sh ensure)"; "$base/bin/nix" --version | awk '{print $NF}' ;;
start) start "$@" ;;
run)
  name=main
  if [ "${1:-}" != "--" ] && [ $# -gt 0 ]; then name=$1; shift; fi
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "run: no command"
  valid_name "$name"
  [ -e "$(store_dir "$name")/this-nix" ] || installed || die "not installed (tests/nix-root.sh ensure)"
  in_namespace "$name" "$@" ;;
socket) name=${1:-main}; valid_name "$name"; [ -n "$(daemon_pid "$name")" ] || die "store $name's daemon is not running"; socket "$name" ;;
stop) name=${1:-main}; valid_name "$name"; stop "$name" ;;
destroy) name=${1:-main}; valid_name "$name"; stop "$name"; rm -rf --one-file-system "$(store_dir "$name")" ;;
*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
