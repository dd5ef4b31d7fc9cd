#!/usr/bin/env bash
# Behind nginx with TLS, as docs/DEPLOY.md sets it up: two websocat clients chat over wss://,
# the page is told the wss:// URL, and the log shows the address nginx saw.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/proxy/lib.sh"
proxy_tools_or_skip
start_behind_proxy

curl -sfk "${HTTPS_URL}config.js" | grep -qF "wsUrl: \"$WSS_URL\"" ||
  fail "/config.js over https does not hand the page $WSS_URL"
curl -sfk "$HTTPS_URL" | grep -q '<title>' || fail "no page over https"

export WEBSOCAT_FLAGS=-k # the test's certificate is self-signed
open_pair "$WSS_URL" "$WSS_URL"
echo "over tls" >&"$alice_fd"
wait_for "bob hears alice through the proxy" has_line bob "$alice: over tls"
# --trust-proxy: the join is logged with the address nginx saw (no port), not nginx's own.
grep -q "^join  $alice from 127.0.0.1$" "$WORK/server.err" ||
  fail "the join log does not show the forwarded address: $(grep join "$WORK/server.err")"
echo "ok: chat over wss:// through nginx"
