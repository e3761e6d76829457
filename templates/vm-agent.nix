# The vm guest's agent (see vm.nix), run as root by two systemd services:
#
#   agent run     on ttyS0: makes the host user, mounts the project at its
#                 host path and the home entries, runs the command as that
#                 user, and reports its exit status;
#   agent enter   on ttyS1: waits for a request from `claude-sandbox enter`
#                 and runs a shell (or the requested command) the same way.
#
# Everything it is told comes from the read-only metadata share as
# NUL-separated data (launch/vm_meta.go) and is only ever used as data:
# arguments of exec, values of variables, lines of /etc/passwd after the
# launcher checked them. Its markers frame the command's output for the
# launcher: ESC _ claude-sandbox:<nonce>:<tag> ESC \ (launch/vm_console.go).
{ pkgs, mnt }:
let
  inherit (pkgs) lib;
  # The system's own programs come last: mount is util-linux's on NixOS.
  path = lib.makeBinPath [ pkgs.coreutils pkgs.util-linux ] + ":/run/current-system/sw/bin:/bin";
in
# bashInteractive: the clean-up before the command lists the environment
# with compgen, which nixpkgs' plain bash lacks (built without readline,
# pkgs/shells/bash/5.nix, so without programmable completion).
pkgs.writeScript "claude-sandbox-agent" ''
  #!${pkgs.bashInteractive}/bin/bash
  set -u
  export PATH=${path}
  mnt=${mnt}
  meta=$mnt/meta
  setpriv=${pkgs.util-linux}/bin/setpriv
  usrBinEnv=${pkgs.coreutils}/bin/env

  say() { printf 'claude-sandbox-agent: %s\n' "$*" >&2; }
  die() { say "$*"; exit 1; }

  [ -r "$meta/run" ] || die "no metadata share at $meta"
  declare -A run=()
  while IFS= read -r -d "" kv; do run[''${kv%%=*}]=''${kv#*=}; done < "$meta/run"
  nonce=''${run[nonce]:-}
  [ -n "$nonce" ] || die "metadata without a nonce"
  uid=''${run[uid]} gid=''${run[gid]} home=''${run[home]} project=''${run[project]}
  user=''${run[user]}
  case $uid$gid in *[!0-9]*) die "bad uid or gid" ;; esac

  envs=()
  while IFS= read -r -d "" kv; do envs+=("$kv"); done < "$meta/env"

  marker() { printf '\033_claude-sandbox:%s:%s\033\\' "$nonce" "$1"; }

  # The passwd entry of uid, if any: its name wins (a name the host user
  # shares with a guest system account must not take that account over).
  passwd_name() {
    local name _x id
    while IFS=: read -r name _x id _x; do
      if [ "$id" = "$1" ]; then printf '%s' "$name"; return 0; fi
    done < /etc/passwd
    return 1
  }
  name_taken() {
    local name _x
    while IFS=: read -r name _x; do [ "$name" = "$1" ] && return 0; done < /etc/passwd
    return 1
  }
  gid_taken() {
    local name _x id
    while IFS=: read -r name _x id _x; do [ "$id" = "$1" ] && return 0; done < /etc/group
    return 1
  }

  # Under emulation every program started costs a visible fraction of a
  # second (it is read over 9p), so the setup batches its work into few
  # commands.
  setup() {
    if [ "$uid" != 0 ]; then
      if existing=$(passwd_name "$uid"); then
        user=$existing
      else
        name_taken "$user" && user=claude-sandbox-$uid
        gid_taken "$gid" || printf '%s:x:%s:\n' "$user" "$gid" >> /etc/group
        printf '%s:x:%s:%s:claude-sandbox:%s:/bin/sh\n' "$user" "$uid" "$gid" "$home" >> /etc/passwd
      fi
    fi

    # Share name and where in the home it goes, for the shares the host has.
    local binds=() dirs=("$home" "$home/.local" "$project") share target
    for share in claude:.claude ssh:.ssh git:.config/git gh:.config/gh; do
      target=$home/''${share#*:}
      share=''${share%%:*}
      [ "''${run[has-$share]:-false}" = true ] || continue
      binds+=("$mnt/$share" "$target")
      dirs+=("$target")
    done
    # ~/.local persists per project, in the host's state directory.
    binds+=("$mnt/state/local" "$home/.local")
    mkdir -p -m 0700 "''${dirs[@]}" "$mnt/state/local" || die "cannot create the home directory"
    while [ ''${#binds[@]} -gt 0 ]; do
      mount --bind "''${binds[0]}" "''${binds[1]}" || die "cannot mount ''${binds[0]} at ''${binds[1]}"
      binds=("''${binds[@]:2}")
    done
    if [ "''${run[fs]:-9p}" = virtiofs ]; then
      mount -t virtiofs "''${run[vfsTag]}" "$project" || die "cannot mount the project over virtiofs"
    else
      mount --bind "$mnt/project" "$project" || die "cannot mount the project"
    fi

    # Copies, never binds: Claude Code rewrites ~/.claude.json by rename.
    local owned=("$home" "$home/.local")
    [ -d "$home/.config" ] && owned+=("$home/.config")
    if [ -f "$meta/claude.json" ]; then
      cp "$meta/claude.json" "$home/.claude.json" && owned+=("$home/.claude.json")
    fi
    if [ -f "$meta/gitconfig" ]; then
      cp "$meta/gitconfig" "$home/.gitconfig" && owned+=("$home/.gitconfig")
    fi
    [ "$uid" = 0 ] || chown "$uid:$gid" "''${owned[@]}" /proc/self/fd/0 2>/dev/null

    # What shebangs expect (environment.binsh and environment.usrbinenv on
    # NixOS). The loader prebuilt binaries expect is the system's own
    # (environment.ldso, vm.nix).
    local links=()
    [ -e /bin/sh ] || links+=("''${run[shell]}" /bin/sh)
    [ -e /bin/bash ] || links+=("''${run[shell]}" /bin/bash)
    [ -e /usr/bin/env ] || links+=("$usrBinEnv" /usr/bin/env)
    if [ ''${#links[@]} -gt 0 ]; then
      mkdir -p /bin /usr/bin
      while [ ''${#links[@]} -gt 0 ]; do
        ln -s "''${links[0]}" "''${links[1]}"
        links=("''${links[@]:2}")
      done
    fi
  }

  # terminal TTY OUTTTY ROWS COLS: the guest terminal as the host's is (one
  # stty). A pipe on the host gets no echo and no CR before each LF.
  terminal() {
    local opts=()
    if [ "$1" = true ]; then opts+=(sane); else opts+=(-echo); fi
    [ "$2" = true ] || opts+=(-onlcr)
    case $3$4 in *[!0-9]*|"") ;; *) [ "$3" -gt 0 ] && opts+=(rows "$3" cols "$4") ;; esac
    stty "''${opts[@]}"
  }

  # supervised ARGV...: runs the command as the user, in the project, with
  # exactly the sandbox's environment, and returns its status. The command
  # shares the agent's process group, the terminal's foreground one: Ctrl-C
  # reaches both, and the agent's traps (handlers, which the command does
  # not inherit, unlike ignored signals) keep it alive through that and
  # through a graceful power-down's SIGTERM, so the status is still
  # reported. Bash's own notices about the command ("Terminated") go to
  # /dev/null; the command gets the terminal as its stderr.
  supervised() {
    local status
    trap ':' TERM HUP INT QUIT
    exec 3>&2 2>/dev/null
    (
      exec 2>&3 3>&-
      cd "$project" 2>/dev/null || cd "$home" 2>/dev/null || cd /
      for v in $(compgen -e); do unset "$v" 2>/dev/null; done
      for kv in "''${envs[@]}"; do export "$kv" 2>/dev/null; done
      if [ "$uid" = 0 ]; then exec "$@"; fi
      exec "$setpriv" --reuid="$uid" --regid="$gid" --init-groups -- "$@"
    )
    status=$?
    exec 2>&3 3>&-
    return "$status"
  }

  case "''${1:-}" in
  run)
    setup
    : > /run/claude-sandbox-ready
    terminal "''${run[tty]}" "''${run[outTty]}" "''${run[rows]}" "''${run[cols]}"
    # From now on the console is the command's: only emergencies from the kernel.
    echo 1 > /proc/sys/kernel/printk
    argv=()
    while IFS= read -r -d "" a; do argv+=("$a"); done < "$meta/argv"
    [ ''${#argv[@]} -gt 0 ] || die "no command"
    marker up
    supervised "''${argv[@]}"
    status=$?
    marker "exit=$status"
    # The guest powers off the moment this returns (SuccessAction=
    # poweroff-force), and whatever the serial port has not sent yet is
    # lost: the kernel's own "Power down" line then reaches the launcher and
    # the exit marker does not. stty sets attributes with TCSADRAIN, so
    # setting the current ones again waits until the marker is out.
    stty "$(stty -g)" 2>/dev/null
    exit 0
    ;;
  enter)
    stty -echo
    until [ -e /run/claude-sandbox-ready ]; do sleep 0.2; done
    # Say "ready" until a request line comes: the launcher sends its request
    # only then, when this terminal is open and reading (input that reaches
    # a closed serial terminal is lost). Other lines are input left over
    # from an earlier session.
    while :; do
      marker ready
      if IFS= read -r -t 1 line; then
        set -f
        set -- $line
        set +f
        [ "''${1:-}" = claude-sandbox-enter ] && [ $# -eq 6 ] && break
      elif [ $? -le 128 ]; then
        sleep 0.5 # end of file (a stray Ctrl-D), not a timeout
      fi
    done
    rows=$2 cols=$3 tty=$4 outtty=$5 lines=$6
    # The command follows as base64 of its NUL-separated arguments, on
    # `lines` lines (a terminal line holds at most 4095 bytes); none: a shell.
    case $lines in *[!0-9]*|"") lines=0 ;; esac
    b64=
    while [ "$lines" -gt 0 ] && IFS= read -r -t 10 chunk; do
      b64+=$chunk
      lines=$((lines - 1))
    done
    [ "$uid" = 0 ] || chown "$uid" /proc/self/fd/0 2>/dev/null
    terminal "$tty" "$outtty" "$rows" "$cols"
    argv=()
    if [ -n "$b64" ]; then
      # lastpipe: the loop runs in this shell, so argv survives it.
      shopt -s lastpipe
      base64 -d <<<"$b64" | while IFS= read -r -d "" a; do argv+=("$a"); done
    fi
    [ ''${#argv[@]} -gt 0 ] || argv=("''${run[shell]}" -l)
    marker enter
    supervised "''${argv[@]}"
    status=$?
    marker "exit=$status"
    exit 0
    ;;
  *)
    die "usage: $0 run|enter"
    ;;
  esac
''
