#!/usr/bin/env bash
# For the browser test: threadchat behind nginx with TLS until terminated. Prints
# "HTTPS_URL=… SERVER_PID=…" once both are ready.
cd "$(dirname "$0")/../../.."
source tests/shell/lib.sh
source tests/shell/proxy/lib.sh
trap 'exit 0' TERM INT
proxy_tools_or_skip
start_behind_proxy
echo "HTTPS_URL=$HTTPS_URL SERVER_PID=$SERVER_PID"
wait
