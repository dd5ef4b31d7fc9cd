#!/usr/bin/env bash
# Behind nginx with TLS, as docs/DEPLOY.md sets it up: two websocat clients chat over wss://,
# the page is told the wss:// URL, and the log shows the address nginx saw.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/proxy/lib.sh"
proxy_tools_or_skip
start_behind_proxy

# Into files, not through grep -q: under pipefail, grep leaving early can make curl fail.
curl -sfk -o "$WORK/config.js" "${HTTPS_URL}config.js" || fail "no /config.js over https"
grep -qF "wsUrl: \"$WSS_URL\"" "$WORK/config.js" ||
  fail "/config.js over https does not hand the page $WSS_URL"
curl -sfk -o "$WORK/page.html" "$HTTPS_URL" || fail "no page over https"
grep -q '<title>' "$WORK/page.html" || fail "no page over https"

export WEBSOCAT_FLAGS=-k # the test's certificate is self-signed
open_pair "$WSS_URL" "$WSS_URL"
echo "over tls" >&"$alice_fd"
wait_for "bob hears alice through the proxy" has_line bob "$alice: over tls"
# --trust-proxy: the join is logged with the address nginx saw (no port), not nginx's own.
grep -q "^join  $alice from 127.0.0.1$" "$WORK/server.err" ||
  fail "the join log does not show the forwarded address: $(grep join "$WORK/server.err")"
echo "ok: chat over wss:// through nginx"
