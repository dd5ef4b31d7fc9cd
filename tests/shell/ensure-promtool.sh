#!/usr/bin/env bash
# Installs Debian's prometheus package (for promtool, which checks /metrics as Prometheus
# reads it) when it is missing and this machine allows it (root, apt). Says so when it
# cannot; the check is then skipped loudly, or fails under CI (any non-empty value).
set -euo pipefail
command -v promtool >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "promtool not found: installing Debian's prometheus package"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  # The package may start a system-wide Prometheus; the tests need only promtool.
  command -v systemctl >/dev/null && systemctl stop prometheus 2>/dev/null || true
  pkill -x prometheus 2>/dev/null || true
else
  echo "promtool not found and apt-get is not available as root: the exposition check will be skipped" >&2
fi
