#!/usr/bin/env bash
# curl fetches the page and the settings it needs; the WebSocket port tells plain HTTP
# clients where the page is.
source "$(dirname "$0")/lib.sh"

start_server
curl -fsS -o "$WORK/page.html" -D "$WORK/page.head" "$HTTP_URL"
grep -qi '^content-type: text/html' "$WORK/page.head" || fail "page is not text/html"
grep -q '<title>threadchat</title>' "$WORK/page.html" || fail "page has no title"
ws_port=${WS_URL##*:}; ws_port=${ws_port%/}
curl -fsS -o "$WORK/config.js" "${HTTP_URL}config.js"
grep -q "wsPort: $ws_port" "$WORK/config.js" || fail "config.js has the wrong port"
status=$(curl -s -o /dev/null -w '%{http_code}' "${HTTP_URL}nothing-here")
[ "$status" = 404 ] || fail "missing file gave $status"
status=$(curl -s -o "$WORK/426.txt" -w '%{http_code}' "http://${WS_URL#ws://}")
[ "$status" = 426 ] || fail "plain HTTP on the WebSocket port gave $status"
grep -qF "$HTTP_URL" "$WORK/426.txt" || fail "426 body does not name the page"
echo "ok: page over curl"
