#!/usr/bin/env bash
# Installs Debian's nginx and openssl when missing and this machine allows it (root, apt).
# Says so when it cannot; the proxy tests then skip loudly, or fail under CI (any non-empty value).
set -euo pipefail
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null || missing+=(openssl)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "not found: ${missing[*]}: installing Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # The package starts a system-wide nginx on port 80; the tests start their own.
  command -v systemctl >/dev/null && systemctl stop nginx 2>/dev/null || true
  pkill -x nginx 2>/dev/null || true
else
  echo "not found and apt-get is not available as root: ${missing[*]}: the proxy tests will be skipped" >&2
fi
