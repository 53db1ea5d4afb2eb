#!/usr/bin/env bash
# Makes sure Debian's chromium and chromium-driver are installed (the
# browser tests and the dashboard benchmark drive them over WebDriver);
# prints the chromedriver path.
set -euo pipefail
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  echo "chromium.sh: installing chromium and chromium-driver (apt-get)" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  log="$(mktemp "${TMPDIR:-/tmp}/chromium-install.XXXXXX.log")"
  if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "chromium.sh: apt-get failed (full log: $log)" >&2
    exit 1
  fi
fi
command -v chromedriver
