#!/usr/bin/env bash
# make bench counts send syscalls with perf (Debian's linux-perf). Installs it when it is
# missing and this machine allows it; otherwise the table says "n/a" for that figure.
set -u
if perf stat -e 'syscalls:sys_enter_writev' true >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "perf not usable: installing Debian's linux-perf"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
perf stat -e 'syscalls:sys_enter_writev' true >/dev/null 2>&1 ||
  echo "WARNING: perf cannot count syscalls here; send syscalls will show n/a" >&2
