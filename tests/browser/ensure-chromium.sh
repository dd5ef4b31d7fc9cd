#!/usr/bin/env bash
# Installs Debian's Chromium when it is missing and this machine allows it (root, apt).
# Never downloads a browser from anywhere else. Says so when it cannot install.
set -euo pipefail
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Chromium not found: installing Debian's chromium package"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "Chromium not found and apt-get is not available as root: the browser test will be skipped" >&2
fi
