#!/usr/bin/env bash
# Two websocat clients chat through threadchat, as the README shows.
source "$(dirname "$0")/lib.sh"

start_server
open_pair "$WS_URL" "$WS_URL"
echo "hello from alice" >&"$alice_fd"
wait_for "bob hears alice" has_line bob "$alice: hello from alice"
wait_for "alice hears herself" has_line alice "$alice: hello from alice"
echo "hi alice" >&"$bob_fd"
wait_for "alice hears bob" has_line alice "$bob: hi alice"
echo "ok: two websocat clients chat"
