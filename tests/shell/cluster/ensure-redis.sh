#!/usr/bin/env bash
# Installs Debian's redis-server when it is missing and this machine allows it (root, apt).
# Says so when it cannot; the cluster tests then skip loudly, or fail under CI (any non-empty value).
set -euo pipefail
command -v redis-server >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "redis-server not found: installing Debian's redis-server package"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  # The package starts a system-wide server on 6379; the tests start their own.
  command -v systemctl >/dev/null && systemctl stop redis-server 2>/dev/null || true
else
  echo "redis-server not found and apt-get is not available as root: the cluster tests will be skipped" >&2
fi
