#!/usr/bin/env bash
# make cluster: a redis-server on 6390 and two instances sharing one room, until Ctrl-C.
# Pages on http://127.0.0.1:8080/ and http://127.0.0.1:8081/ (WebSockets on 12345, 12346).
set -euo pipefail
binary=$1
trap 'kill 0' EXIT
redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
until redis-cli -p 6390 ping >/dev/null 2>&1; do sleep 0.1; done
"$binary" --http-port 8080 --ws-port 12345 --redis redis://127.0.0.1:6390/ &
"$binary" --http-port 8081 --ws-port 12346 --redis redis://127.0.0.1:6390/ &
wait
