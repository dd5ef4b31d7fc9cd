# Helpers for the shell tests: start threadchat on free ports, wait for conditions with
# a deadline, and clean up whatever a test started.
set -euo pipefail

THREADCHAT=${THREADCHAT:-target/debug/threadchat}
PATIENCE_S=${PATIENCE_S:-10}
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# The script's own stderr, for fail: it still reaches the log from a condition that wait_for
# runs with its output discarded.
exec {FAIL_FD}>&2
fail() { echo "FAIL: $*" >&"$FAIL_FD"; exit 1; }

# skip WHAT: a tool the test needs is missing. Under CI (any non-empty value) that fails the
# test; elsewhere the test is skipped, loudly, with the status run.sh counts as skipped.
skip() {
  [ -z "${CI:-}" ] || fail "$1 (CI requires it; make test installs it)"
  echo "WARNING: SKIPPED $(basename "$0"): $1" >&2
  exit 77
}

# wait_for DESCRIPTION COMMAND...: runs COMMAND until it succeeds or the deadline passes.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + PATIENCE_S))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for: $what"
    sleep 0.05
  done
}

# curl gives up after PATIENCE_S, as every wait here does, rather than wait on a server
# that accepted and never answers.
curl() { command curl --max-time "$PATIENCE_S" "$@"; }

# start_server [FLAGS...]: sets HTTP_URL and WS_URL from the startup lines.
start_server() {
  "$THREADCHAT" --http-port 0 --ws-port 0 "$@" >"$WORK/server.out" 2>"$WORK/server.err" &
  SERVER_PID=$!
  PIDS+=($!)
  wait_for "server start" grep -q 'ws://' "$WORK/server.out"
  HTTP_URL=$(grep -o 'http://[^ ]*/' "$WORK/server.out" | head -n1)
  WS_URL=$(grep -o 'ws://[^ ]*/' "$WORK/server.out" | head -n1)
}

# open_client NAME: a websocat client whose input is file descriptor NAME_FD.
# Lines it receives go to $WORK/NAME.out.
open_client() {
  local name=$1
  mkfifo "$WORK/$name.in"
  # shellcheck disable=SC2086 # WEBSOCAT_FLAGS is a list of flags, e.g. -k for a test certificate
  websocat ${WEBSOCAT_FLAGS:-} --linemode-strip-newlines "$WS_URL" <"$WORK/$name.in" >"$WORK/$name.out" &
  PIDS+=($!)
  eval "exec {${name}_fd}>\"\$WORK/$name.in\""
  wait_for "$name's join" grep -q 'has joined\.$' "$WORK/$name.out"
}

# nickname_of NAME: the user-N in the client's first line.
nickname_of() { head -n1 "$WORK/$1.out" | sed -E 's/^ \.\.\.\. (user-[0-9]+) has joined\.$/\1/'; }

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

has_line() { grep -qxF -- "$2" "$WORK/$1.out"; }

# open_pair URL_A URL_B: websocat clients alice (on URL_A) and bob (on URL_B); sets $alice and
# $bob to their nicknames once alice has seen bob join.
open_pair() {
  WS_URL=$1 open_client alice
  WS_URL=$2 open_client bob
  alice=$(nickname_of alice)
  bob=$(nickname_of bob)
  [ "$alice" != "$bob" ] || fail "two clients got the same nickname $alice"
  wait_for "alice sees bob join" has_line alice " .... $bob has joined."
}
