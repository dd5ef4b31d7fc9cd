#!/usr/bin/env bash
# Two threadchat instances share one room through Redis; a websocat client on each chats
# with the other. Needs a build with the redis feature ($THREADCHAT) and redis-server.
source "$(dirname "$0")/../lib.sh"

command -v redis-server >/dev/null || skip "redis-server not found"
port=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.out" &
PIDS+=($!)
wait_for "redis-server" grep -q "Ready to accept connections" "$WORK/redis.out"

# start_instance NAME: starts an instance and sets NAME to its WebSocket URL.
start_instance() {
  local out="$WORK/$1.server"
  "$THREADCHAT" --http-port 0 --ws-port 0 --redis "redis://127.0.0.1:$port/" >"$out" 2>"$out.err" &
  PIDS+=($!)
  wait_for "instance $1" grep -q 'ws://' "$out"
  grep -q '^threadchat: room shared through redis://' "$out" || fail "no cluster line from $1"
  printf -v "$1" '%s' "$(grep -o 'ws://[^ ]*/' "$out" | head -n1)"
}
start_instance one
start_instance two

open_pair "$one" "$two" # alice on one, bob on two
echo "hello from one" >&"$alice_fd"
wait_for "bob hears alice" has_line bob "$alice: hello from one"
echo "hello from two" >&"$bob_fd"
wait_for "alice hears bob" has_line alice "$bob: hello from two"
echo "ok: two instances, one room"
