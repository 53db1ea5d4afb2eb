#!/usr/bin/env bash
# Installs Debian packages quietly (sudo when not root), without
# recommends; the apt log is kept and its tail printed only on failure.
#   scripts/apt-install.sh PACKAGE...
set -euo pipefail
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
log="$(mktemp "${TMPDIR:-/tmp}/apt-install.XXXXXX.log")"
if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
      apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "apt-install.sh: apt-get install $* failed (full log: $log)" >&2
  exit 1
fi
