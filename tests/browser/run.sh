#!/usr/bin/env bash
# Runs the browser test. Without Chromium (or Node) it is skipped loudly, except under
# CI (any non-empty value), where a missing browser fails the run.
set -euo pipefail
cd "$(dirname "$0")"
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

missing() {
  if [ -n "${CI:-}" ]; then
    echo "FAIL: browser test: $1 (CI requires it)" >&2
    exit 1
  fi
  echo "################################################################" >&2
  echo "## SKIPPED: browser test: $1" >&2
  echo "## Install Debian's chromium (apt-get install chromium) to run it." >&2
  echo "################################################################" >&2
  exit 0
}

[ -x "$CHROMIUM" ] || missing "no Chromium at $CHROMIUM"
command -v node >/dev/null || missing "no node to drive it"
if [ ! -d node_modules/playwright-core ]; then
  # --ignore-scripts: playwright-core must never try to download a browser.
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
fi
# Each test ends within TEST_DEADLINE_MS whatever the page or the server does; every wait in
# it has a shorter deadline of its own.
node --test --test-timeout="${TEST_DEADLINE_MS:-120000}" chat.test.mjs proxy.test.mjs resume.test.mjs admin.test.mjs
