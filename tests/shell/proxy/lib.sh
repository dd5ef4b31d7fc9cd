# threadchat behind nginx with TLS, configured by the nginx block of docs/DEPLOY.md itself.
# Source after ../lib.sh.
PATH=$PATH:/usr/sbin

# proxy_tools_or_skip: returns when nginx and openssl are here; otherwise skips the test
# loudly, or fails it under CI.
proxy_tools_or_skip() {
  if command -v nginx >/dev/null && command -v openssl >/dev/null; then return 0; fi
  skip "nginx or openssl not found"
}

# nginx_owns_its_port PID: nginx PID has written its pid file; fails the test if it has exited
# (its port was taken: nginx says so in its error log).
nginx_owns_its_port() {
  kill -0 "$1" 2>/dev/null || fail "nginx exited: $(cat "$WORK/nginx-error.log" 2>/dev/null)"
  [ "$(cat "$WORK/nginx.pid" 2>/dev/null)" = "$1" ]
}

# start_behind_proxy: starts threadchat and nginx in front of it; sets HTTPS_URL, WSS_URL
# and SERVER_PID.
start_behind_proxy() {
  local tls_port page_port ws_port
  tls_port=$(free_port)
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
  start_server --ws-url "wss://127.0.0.1:$tls_port/ws" --trust-proxy
  page_port=${HTTP_URL##*:}; page_port=${page_port%/}
  ws_port=${WS_URL##*:}; ws_port=${ws_port%/}
  awk '/^```nginx$/ { on = 1; next } /^```$/ { if (on) exit } on' docs/DEPLOY.md |
    sed -e "s|listen 443 ssl;|listen 127.0.0.1:$tls_port ssl;|" \
        -e "s|127.0.0.1:8080|127.0.0.1:$page_port|" \
        -e "s|127.0.0.1:12345|127.0.0.1:$ws_port|" \
        -e "s|/etc/ssl/certs/chat.example.org.pem|$WORK/cert.pem|" \
        -e "s|/etc/ssl/private/chat.example.org.key|$WORK/key.pem|" >"$WORK/site.conf"
  grep -q "127.0.0.1:$ws_port" "$WORK/site.conf" || fail "no nginx block found in docs/DEPLOY.md"
  mkdir -p "$WORK/nginx"
  {
    [ "$(id -u)" != 0 ] || echo "user root;"
    cat <<CONF
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events {}
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  include $WORK/site.conf;
}
CONF
  } >"$WORK/nginx.conf"
  nginx -p "$WORK/nginx" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf" &
  local nginx_pid=$!
  PIDS+=($nginx_pid)
  # nginx writes its pid file once it has bound its port: then the port is its own, not that
  # of a process that took it since free_port saw it free.
  wait_for "nginx to bind 127.0.0.1:$tls_port" nginx_owns_its_port "$nginx_pid"
  HTTPS_URL="https://127.0.0.1:$tls_port/"
  WSS_URL="wss://127.0.0.1:$tls_port/ws"
  wait_for "nginx in front of threadchat" curl -sfk "${HTTPS_URL}config.js"
}
