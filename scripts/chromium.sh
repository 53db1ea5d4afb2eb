#!/usr/bin/env bash
# Makes sure Debian's chromium and chromium-driver are installed (the
# browser tests and the dashboard benchmark drive them over WebDriver);
# prints the chromedriver path.
set -euo pipefail
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  echo "chromium.sh: installing chromium and chromium-driver (apt-get)" >&2
  "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" chromium chromium-driver
fi
command -v chromedriver
