#!/usr/bin/env bash
# When a websocat client's input ends, the others are told it left.
source "$(dirname "$0")/lib.sh"

start_server
open_client alice
open_client bob
bob=$(nickname_of bob)
exec {bob_fd}>&-   # end bob's input: websocat closes the connection
wait_for "alice hears bob leave" has_line alice " .... $bob has left."
# Anything more about bob would come before a line alice sends now.
alice=$(nickname_of alice)
echo "after" >&"$alice_fd"
wait_for "alice hears her line after the leave" has_line alice "$alice: after"
[ "$(grep -cxF " .... $bob has left." "$WORK/alice.out")" = 1 ] || fail "leave announced more than once"
wait_for "server logs the leave" grep -q "leave $bob from 127.0.0.1:" "$WORK/server.err"
echo "ok: leave notice"
