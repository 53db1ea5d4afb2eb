#!/usr/bin/env bash
# Makes sure Debian's prometheus (the server and promtool) is installed, for
# the metrics test and the rule checks; prints the prometheus path. The
# package's service is not started (RUNLEVEL=1): tests run their own.
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "prometheus.sh: installing prometheus (apt-get)" >&2
  "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" prometheus
fi
command -v prometheus
