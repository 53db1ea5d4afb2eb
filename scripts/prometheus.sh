#!/usr/bin/env bash
# Makes sure Debian's prometheus (the server and promtool) is installed, for
# the metrics test and the rule checks; prints the prometheus path. The
# package's service is not started: tests run their own.
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "prometheus.sh: installing prometheus (apt-get)" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  log="$(mktemp "${TMPDIR:-/tmp}/prometheus-install.XXXXXX.log")"
  # policy-rc.d keeps the package from starting its own server.
  if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
        apt-get install -y -qq --no-install-recommends prometheus; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "prometheus.sh: apt-get failed (full log: $log)" >&2
    exit 1
  fi
fi
command -v prometheus
