#!/usr/bin/env bash
# The Go rows of make bench: threadchat against a gorilla/websocket hub server, both driven
# by the same Go generator (target/go/gen), and printed as one markdown table.
#
# Each server runs alone on core 0 and the generator on core 1, so neither takes CPU from
# the other and the server's CPU per delivery is its own. Every scenario gets a fresh server.
# The generator stops after joining and after draining (-gate) so that the server's CPU time
# (/proc/PID/stat) and threadchat's /metrics are read around the measured phase only.
#
# The cluster rows run two instances of the redis build (CLUSTERED) sharing one redis-server,
# all three on core 0, with the generator's clients spread over both instances; their CPU
# is summed over the three, against one instance of THREADCHAT alone in the same run.
#
# Usage: run.sh [THREADCHAT [CLUSTERED]]   (GO_BENCH_SECONDS: how long each scenario sends, default 10;
# BENCH_ONLY=text: only the scenarios whose name contains it, e.g. BENCH_ONLY="go C=1000")
set -uo pipefail
cd "$(dirname "$0")/../../.."
threadchat=${1:-target/release/threadchat}
clustered=${2:-target/redis/release/threadchat}
gen=target/go/gen
hub=target/go/hub
send_for=${GO_BENCH_SECONDS:-10}
senders=10

if [ ! -x "$gen" ] || [ ! -x "$hub" ]; then
  echo "NO GO ROWS: $gen or $hub is missing (tests/loadgen/go/build.sh could not build them)"
  exit 0
fi
if ! command -v taskset >/dev/null; then
  echo "NO GO ROWS: taskset (util-linux) is missing; the servers cannot be pinned"
  exit 0
fi
# 1000 clients need 1000 descriptors on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
server_pid=
gen_pid=
cluster_pids=
stop_all() {
  [ -n "$gen_pid" ] && kill "$gen_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  [ -n "$cluster_pids" ] && kill $cluster_pids 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap stop_all EXIT

# Waits up to 10 s for a line of FILE matching PATTERN and prints the part sed keeps.
wait_for_line() {
  local file=$1 pattern=$2
  for _ in $(seq 100); do
    local found
    found=$(sed -n "$pattern" "$file" | head -n 1)
    [ -n "$found" ] && { echo "$found"; return 0; }
    sleep 0.1
  done
  return 1
}

# Starts redis-server and two instances of the redis build sharing it, all on core 0; sets
# cluster_pids (Redis last), url (both instances) and admin (the first's).
start_cluster() {
  local port out urls=
  for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 40000))
    taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
      </dev/null >/dev/null 2>&1 &
    local redis=$!
    for _ in $(seq 50); do
      redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
      sleep 0.1
    done
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then break; fi
    kill "$redis" 2>/dev/null
    redis=
  done
  [ -n "${redis:-}" ] || { echo "redis-server did not start" >&2; return 1; }
  cluster_pids=
  admin=
  for n in 1 2; do
    out="$work/instance$n.out"
    taskset -c 0 "$clustered" --http-port 0 --ws-port 0 --admin-port 0 --rate-limit 0 \
      --max-clients-per-address 0 --ping-interval 0 --redis "redis://127.0.0.1:$port/" \
      </dev/null >"$out" 2>/dev/null &
    cluster_pids="$cluster_pids $!"
    urls="$urls,$(wait_for_line "$out" 's|.*\(ws://[0-9.:]*\).*|\1/|p')" || return 1
    [ -n "$admin" ] || admin=$(wait_for_line "$out" 's|.*admin on http://\([0-9.:]*\)/.*|\1|p') || return 1
  done
  cluster_pids="$cluster_pids $redis"
  url=${urls#,}
}

# Starts KIND (threadchat or hub) on core 0; sets server_pid, url and admin.
start_server() {
  : >"$work/server.out"
  if [ "$1" = cluster ]; then
    start_cluster
    return
  fi
  if [ "$1" = threadchat ]; then
    taskset -c 0 "$threadchat" --http-port 0 --ws-port 0 --admin-port 0 --rate-limit 0 \
      --max-clients-per-address 0 --ping-interval 0 </dev/null >"$work/server.out" 2>/dev/null &
    server_pid=$!
    url=$(wait_for_line "$work/server.out" 's|.*\(ws://[0-9.:]*\).*|\1/|p') &&
      admin=$(wait_for_line "$work/server.out" 's|.*admin on http://\([0-9.:]*\)/.*|\1|p')
  else
    taskset -c 0 "$hub" 127.0.0.1:0 </dev/null >"$work/server.out" 2>/dev/null &
    server_pid=$!
    url=$(wait_for_line "$work/server.out" 's|^listening on \(.*\)|ws://\1/|p')
    admin=
  fi || { echo "$1 never said where it listens" >&2; return 1; }
}

stop_server() {
  kill $server_pid $cluster_pids 2>/dev/null
  wait $server_pid $cluster_pids 2>/dev/null
  server_pid=
  cluster_pids=
}

# CPU time (user + system) of the server's processes (a cluster's: both instances and
# Redis), in clock ticks.
cpu_ticks() {
  local total=0 pid
  for pid in $server_pid $cluster_pids; do
    total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')))
  done
  echo "$total"
}

metrics() {
  curl -s --max-time 5 "http://$admin/metrics" | grep '^threadchat_delivery_delay_seconds_bucket' || true
}

# The q quantile (ms) of the deliveries between two snapshots of the delay histogram, as
# Prometheus's histogram_quantile computes it: linear within the bucket the rank falls in.
delay_quantile() {
  awk -v q="$3" '
    { match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n = $NF }
    FILENAME == ARGV[1] { before[le] = n; next }
    { bound[++k] = le; count[k] = n - before[le] }
    END {
      if (k == 0 || count[k] <= 0) { print "-"; exit }
      rank = q * count[k]; lower = 0; below = 0
      for (i = 1; i <= k; i++) {
        if (count[i] >= rank) {
          if (bound[i] == "+Inf") { printf "%.2f", lower * 1000; exit }
          share = (count[i] > below) ? (rank - below) / (count[i] - below) : 0
          printf "%.2f", (lower + (bound[i] - lower) * share) * 1000; exit
        }
        lower = bound[i]; below = count[i]
      }
    }' "$1" "$2"
}

# Runs one scenario against KIND; leaves its figures in $work/KIND.
measure() {
  local kind=$1 clients=$2 rate=$3 window=$4
  : >"$work/$kind"
  start_server "$kind" || return
  coproc GEN { taskset -c 1 "$gen" -url "$url" -clients "$clients" -senders "$senders" \
    -rate "$rate" -window "$window" -seconds "$send_for" -gate 2>"$work/gen.err"; }
  gen_pid=$GEN_PID
  local out=${GEN[0]} in=${GEN[1]} line result= before after
  if read -r -t 120 -u "$out" line && [ "$line" = joined ]; then
    [ -n "$admin" ] && metrics >"$work/before"
    before=$(cpu_ticks)
    echo go >&"$in"
    if read -r -t $((send_for + 60)) -u "$out" line && [ "$line" = drained ]; then
      after=$(cpu_ticks)
      [ -n "$admin" ] && metrics >"$work/after"
      echo go >&"$in"
      read -r -t 60 -u "$out" result
    fi
  fi
  if [ -z "$result" ]; then
    echo "$kind, $clients clients, rate $rate: the generator did not finish: $(tail -n 3 "$work/gen.err")" >&2
    kill "$gen_pid" 2>/dev/null
  fi
  wait "$gen_pid" 2>/dev/null
  gen_pid=
  stop_server
  [ -n "$result" ] || return
  {
    echo "$result" | tr ' ' '\n'
    local deliveries
    deliveries=$(echo "$result" | tr ' ' '\n' | sed -n 's/^deliveries=//p')
    awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$deliveries" \
      'BEGIN { if (n > 0) printf "cpu_us=%.2f\n", t / hz * 1e6 / n }'
    if [ -n "$admin" ]; then
      echo "delay_p50=$(delay_quantile "$work/before" "$work/after" 0.5)"
      echo "delay_p99=$(delay_quantile "$work/before" "$work/after" 0.99)"
    fi
  } >"$work/$kind"
}

figure() { sed -n "s/^$2=//p" "$work/$1"; }
cell() {
  local kind=$1 f
  [ -s "$work/$kind" ] || { echo "-"; return; }
  case $2 in
    latency) echo "$(figure "$kind" p50_ms) / $(figure "$kind" p99_ms) / $(figure "$kind" max_ms)" ;;
    delay) f=$(figure "$kind" delay_p50); [ -n "$f" ] && echo "$f / $(figure "$kind" delay_p99)" || echo "-" ;;
    *) f=$(figure "$kind" "$2"); echo "${f:--}" ;;
  esac
}

echo
echo "machine: $(nproc) cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) at the start; each server on core 0, the Go generator on core 1, $senders senders, ${send_for} s each"
echo
printf '| %-30s | %-40s | %-22s | %-22s |\n' scenario figure threadchat "hub peer"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..32})" "$(printf -- '-%.0s' {1..42})" \
  "$(printf -- '-%.0s' {1..24})" "$(printf -- '-%.0s' {1..24})"
# clients, lines/s (0: as fast as it goes), lines in flight per sender, label
while read -r clients rate window label; do
  # As in the Rust generator, BENCH_ONLY=text runs only the scenarios whose name contains it.
  case $label in *"${BENCH_ONLY:-}"*) ;; *) continue ;; esac
  measure threadchat "$clients" "$rate" "$window"
  measure hub "$clients" "$rate" "$window"
  row() { printf '| %-30s | %-40s | %-22s | %-22s |\n' "$label" "$1" "$(cell threadchat "$2")" "$(cell hub "$2")"; }
  row "latency p50 / p99 / max (ms)" latency
  row "deliveries/s" deliveries_per_s
  row "lost deliveries" lost
  row "server CPU per delivery (us)" cpu_us
  row "server's delivery delay p50 / p99 (ms)" delay
  row "generator CPU (s)" generator_cpu_s
done <<'SCENARIOS'
100 200 50 go C=100 200 lines/s
1000 50 50 go C=1000 50 lines/s
1000 200 50 go C=1000 200 lines/s
1000 0 50 go C=1000 max, 50 in flight
SCENARIOS

# The cluster's cost: the same scenario on one instance and on two sharing Redis.
label="go cluster C=1000 200 lines/s"
case $label in *"${BENCH_ONLY:-}"*)
  if [ -x "$clustered" ] && command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    measure threadchat 1000 200 50
    measure cluster 1000 200 50
    echo
    printf '| %-30s | %-40s | %-22s | %-22s |\n' scenario figure "one instance" "2 instances + Redis"
    printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..32})" "$(printf -- '-%.0s' {1..42})" \
      "$(printf -- '-%.0s' {1..24})" "$(printf -- '-%.0s' {1..24})"
    row() { printf '| %-30s | %-40s | %-22s | %-22s |\n' "$label" "$1" "$(cell threadchat "$2")" "$(cell cluster "$2")"; }
    row "latency p50 / p99 / max (ms)" latency
    row "deliveries/s" deliveries_per_s
    row "lost deliveries" lost
    row "CPU per delivery, all processes (us)" cpu_us
    one=$(figure threadchat cpu_us) two=$(figure cluster cpu_us)
    [ -n "$one" ] && [ -n "$two" ] &&
      printf '| %-30s | %-40s | %-22s | %-22s |\n' "$label" "cost, 2 instances + Redis / 1 (<= 1.3x)" "" \
        "$(awk -v a="$two" -v b="$one" 'BEGIN { printf "%.2fx", a / b }')"
  else
    echo "NO GO CLUSTER ROWS: $clustered, redis-server or redis-cli is missing"
  fi ;;
esac
