#!/usr/bin/env bash
# Builds the fleet page (dashboard/web) into dashboard/web/dist with esbuild,
# from the packages pinned in its package-lock.json; nodectl embeds the
# result when it is built next. Installs nothing but the page's own npm
# packages (into dashboard/web/node_modules); needs Node.js and npm.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
web="$root/dashboard/web"
if ! command -v npm >/dev/null 2>&1; then
  echo "dashboard.sh: npm not found; installing Node.js (apt-get install nodejs npm)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq nodejs npm >/dev/null; fi
fi
cd "$web"
# npm ci only when the lockfile changed since the last install.
stamp="node_modules/.package-lock.json"
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
node build.mjs
