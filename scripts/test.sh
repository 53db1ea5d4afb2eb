#!/usr/bin/env bash
# Runs every test of the workspace: unit tests and the end-to-end tests,
# which start real nats-servers (installed on first use by nats-server.sh);
# the dashboard's tests drive a real headless Chromium (Debian's chromium
# and chromium-driver, installed by chromium.sh when missing) over the page
# built by dashboard.sh (npm ci + esbuild); the metrics tests run Debian's
# prometheus and promtool (installed by prometheus.sh when missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Install nats-server now, not inside the first test that needs it.
NATS_SERVER_BIN="$("$root/scripts/nats-server.sh")"
export NATS_SERVER_BIN
echo "using $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version))"
"$root/scripts/prometheus.sh" >/dev/null
CHROMEDRIVER="$("$root/scripts/chromium.sh")"
export CHROMEDRIVER
"$root/scripts/dashboard.sh"
cargo build --workspace --bins --quiet
cargo test --workspace "$@"
