#!/usr/bin/env bash
# The standard benchmark suite: starts the system in embedded mode and in distributed mode (a
# private redis-server, 2 gateways, 2 chat-api processes sharing one SQLite file), runs the loadtest
# scenarios against each, and against a Socket.IO cluster with the Redis adapter when `node` is
# installed (loadtest/socketio), then prints one table with every figure beside its SPEC §7 budget.
#
#   scripts/bench.sh            full suite on `dist`-profile binaries (builds them; ~10 min on 2 cores)
#   scripts/bench.sh --smoke    seconds-long run on debug binaries (CI): checks nothing was lost
#   scripts/bench.sh --only=S   full mode, only the scenario S (connect, fanout, soak, flood,
#                               latency, catchup) on every system that has it
#
# Results (JSON per scenario, PNG plots in full mode) go to $BENCH_OUT (default target/bench).
# BENCH_BIN=DIR (full mode) uses the binaries in DIR instead of building target/dist.
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=full
ONLY=""
for arg in "$@"; do
  case "$arg" in
    --smoke) MODE=smoke ;;
    --only=connect|--only=fanout|--only=soak|--only=flood|--only=latency|--only=catchup) ONLY=${arg#--only=} ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (use --smoke or --only=SCENARIO)" >&2; exit 2 ;;
  esac
done
# want SCENARIO: whether this run includes it
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

OUT=${BENCH_OUT:-target/bench}
rm -rf "$OUT" && mkdir -p "$OUT/results" "$OUT/logs"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$MODE" = full ]; then
  if [ -n "${BENCH_BIN:-}" ]; then
    BIN=$BENCH_BIN # binaries built elsewhere (comparing two builds), used as they are
  else
    echo "==> building dist-profile binaries (thin LTO, one codegen unit)"
    # The profile the Docker image ships (thin LTO, one codegen unit), not the quick start's.
    cargo build --profile dist --bins -p chat-api -p gateway -p loadtest
    BIN=target/dist
  fi
  # name  sockets  fan-out: chats members rate secs  latency: rate secs  soak: sockets churn secs
  # catch-up: members rate drops/s secs
  CONNECT_SOCKETS=10000; FO_CHATS=4; FO_MEMBERS=1000; FO_RATE=100; FO_SECS=20s
  LAT_RATES="500 5000"; LAT_SECS=15s; SOAK_SOCKETS=2000; SOAK_CHURN=200; SOAK_SECS=60s
  CU_MEMBERS=200; CU_RATE=200; CU_DROPS=20; CU_SECS=30s
  FLOOD_SECS=20s
  PLOT=1
else
  BIN=target/debug
  if [ ! -x "$BIN/loadtest" ] || [ ! -x "$BIN/chat-api" ] || [ ! -x "$BIN/gateway" ]; then
    cargo build --workspace --bins --tests # the selection scripts/test.sh builds
  fi
  CONNECT_SOCKETS=200; FO_CHATS=2; FO_MEMBERS=20; FO_RATE=20; FO_SECS=2s
  LAT_RATES="50"; LAT_SECS=2s; SOAK_SOCKETS=40; SOAK_CHURN=20; SOAK_SECS=3s
  CU_MEMBERS=10; CU_RATE=20; CU_DROPS=4; CU_SECS=3s
  FLOOD_SECS=2s
  PLOT=0
fi

# A port base per run, so that two runs on one machine do not collide. It stays below the kernel's
# ephemeral range (32768 and up here): a listener there can find its port already taken as the
# source port of an outgoing connection (seen: the second Socket.IO node never started).
BASE=$(( 10000 + ($$ % 2000) * 10 ))
export JWT_SECRET="bench-secret-$(date +%s)-0123456789abcdefghijklmnop"
# The scenarios send far faster than one person would: rate limits off (docs/SECURITY.md).
# The connect scenarios open thousands of sockets from a few loopback addresses at once, so the
# per-address handshake cap is raised with them (the flood scenario restores the defaults).
export API_RATE_REQUESTS=off API_RATE_MESSAGES=off CONNECT_RATE_PER_IP=off MAX_HANDSHAKES_PER_IP=100000
export LOG_FORMAT=text RUST_LOG=${RUST_LOG:-warn}

wait_port() { # host:port [log name], bounded; on failure shows the end of that process's log
  local i
  for i in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1 after 30 s" >&2
  if [ -n "${2:-}" ] && [ -f "$OUT/logs/$2.log" ]; then
    echo "--- last lines of $OUT/logs/$2.log" >&2; tail -n 20 "$OUT/logs/$2.log" >&2
  fi
  return 1
}
start() { # name, then the command; logs to $OUT/logs/name.log; sets LAST_PID
  local name=$1; shift
  "$@" >"$OUT/logs/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
lt() { "$BIN/loadtest" "$@"; }
plot() { if [ "$PLOT" = 1 ]; then echo "--plot $OUT/$1.png"; fi; }
uname -a >"$OUT/machine.txt"; nproc >>"$OUT/machine.txt"; cat /proc/loadavg >>"$OUT/machine.txt"

if want connect || want fanout || want soak; then
  echo "==> embedded: chat-api embedded (one process: API + gateway + SQLite)"
  E_API=127.0.0.1:$((BASE+1)); E_GW=127.0.0.1:$((BASE+2))
  DATA_DIR=$WORK/embedded API_ADDR=$E_API GATEWAY_ADDR=$E_GW start embedded "$BIN/chat-api" embedded
  EPID=$LAST_PID
  wait_port "$E_API" embedded; wait_port "$E_GW" embedded
  want connect && lt connect --url "ws://$E_GW/ws" --sockets "$CONNECT_SOCKETS" --rate 2000 --processes 2 \
    --source-ips 4 --gateway-pid "$EPID" --settle 2s --hold 1s --out "$OUT/results/embedded-connect.json"
  want fanout && lt fanout --api "http://$E_API" --ws "ws://$E_GW/ws" --gateway-pids "$EPID" --chats "$FO_CHATS" \
    --members "$FO_MEMBERS" --rate "$FO_RATE" --duration "$FO_SECS" --out "$OUT/results/embedded-fanout.json"
  want soak && lt soak --ws "ws://$E_GW/ws" --gateway-pids "$EPID" --sockets "$SOAK_SOCKETS" --churn-rate "$SOAK_CHURN" \
    --duration "$SOAK_SECS" --out "$OUT/results/embedded-soak.json" $(plot embedded-soak-rss)
  stop "$EPID"
fi

if want flood; then
  echo "==> embedded with the default rate limits: one user and one address flood, another user measures"
  F_API=127.0.0.1:$((BASE+8)); F_GW=127.0.0.1:$((BASE+9))
  start flood env -u API_RATE_REQUESTS -u API_RATE_MESSAGES -u CONNECT_RATE_PER_IP -u MAX_HANDSHAKES_PER_IP \
    DATA_DIR="$WORK/flood" API_ADDR="$F_API" GATEWAY_ADDR="$F_GW" "$BIN/chat-api" embedded
  FPID=$LAST_PID
  wait_port "$F_API" flood; wait_port "$F_GW" flood
  lt flood --api "http://$F_API" --ws "ws://$F_GW/ws" --duration "$FLOOD_SECS" \
    --out "$OUT/results/embedded-flood.json" >/dev/null
  stop "$FPID"
fi

if command -v redis-server >/dev/null; then
  echo "==> distributed: redis-server, 2 gateways, 2 chat-api serve"
  R=$((BASE+3)); GA=127.0.0.1:$((BASE+4)); GB=127.0.0.1:$((BASE+5))
  AA=127.0.0.1:$((BASE+6)); AB=127.0.0.1:$((BASE+7))
  start redis redis-server --port "$R" --bind 127.0.0.1 --save "" --appendonly no
  wait_port "127.0.0.1:$R" redis
  export REDIS_URL=redis://127.0.0.1:$R
  mkdir -p "$WORK/dist"
  NODE_ID=gw-a GATEWAY_ADDR=$GA start gw-a "$BIN/gateway"; GAPID=$LAST_PID
  NODE_ID=gw-b GATEWAY_ADDR=$GB start gw-b "$BIN/gateway"; GBPID=$LAST_PID
  # The first API creates the SQLite file before the second opens it (WAL switch).
  WORKER_ID=1 STORE_URL=sqlite:$WORK/dist/chat.db API_ADDR=$AA start api-1 "$BIN/chat-api" serve
  wait_port "$AA" api-1
  WORKER_ID=2 STORE_URL=sqlite:$WORK/dist/chat.db API_ADDR=$AB start api-2 "$BIN/chat-api" serve
  wait_port "$AB" api-2; wait_port "$GA" gw-a; wait_port "$GB" gw-b
  # A real Prometheus scrapes the four processes under the load below, with the shipped alerting
  # rules loaded; after the scenarios, every rule and dashboard query must return data.
  PROM=""
  if command -v prometheus >/dev/null; then
    PROM=127.0.0.1:$((BASE+11))
    cat >"$WORK/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$(pwd)/k8s/monitoring/alerts/chat-alerts.yaml"]
scrape_configs:
  - job_name: chat
    static_configs:
      - {targets: ["$GA"], labels: {namespace: chat, pod: gw-a, container: gateway, service: gateway}}
      - {targets: ["$GB"], labels: {namespace: chat, pod: gw-b, container: gateway, service: gateway}}
      - {targets: ["$AA"], labels: {namespace: chat, pod: api-1, container: chat-api, service: chat-api}}
      - {targets: ["$AB"], labels: {namespace: chat, pod: api-2, container: chat-api, service: chat-api}}
YAML
    start prometheus prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prom" \
      --web.listen-address="$PROM" --log.level=warn
    wait_port "$PROM" prometheus
  elif [ "${MONITORING_CHECK:-}" = require ]; then
    echo "prometheus is not installed (MONITORING_CHECK=require)" >&2; exit 1
  fi
  want connect && lt connect --url "ws://$GA/ws" --sockets "$CONNECT_SOCKETS" --rate 2000 --processes 2 \
    --source-ips 4 --gateway-pid "$GAPID" --settle 2s --hold 1s --out "$OUT/results/distributed-connect.json"
  want fanout && lt fanout --api "http://$AA,http://$AB" --ws "ws://$GA/ws,ws://$GB/ws" --gateway-pids "$GAPID,$GBPID" \
    --chats "$FO_CHATS" --members "$FO_MEMBERS" --rate "$FO_RATE" --duration "$FO_SECS" \
    --out "$OUT/results/distributed-fanout.json"
  want latency && for rate in $LAT_RATES; do
    lt latency --api "http://$AA,http://$AB" --ws "ws://$GB/ws" --rate "$rate" --duration "$LAT_SECS" \
      --out "$OUT/results/distributed-latency-$rate.json" $(plot "distributed-latency-$rate")
  done
  # Sockets dropped at random under a steady stream, reconnecting to the other node: every
  # member must end up holding every acknowledged message (SPEC §6).
  want catchup && lt catchup --api "http://$AA,http://$AB" --ws "ws://$GA/ws,ws://$GB/ws" --members "$CU_MEMBERS" \
    --rate "$CU_RATE" --drops-per-s "$CU_DROPS" --duration "$CU_SECS" \
    --out "$OUT/results/distributed-catchup.json"
  # Each process's metrics after the scenarios, to read a run afterwards (store latency, SQLite
  # group commits and lock waits, stream read ages).
  mkdir -p "$OUT/metrics"
  for p in "api-1 $AA" "api-2 $AB" "gw-a $GA" "gw-b $GB"; do
    curl -sf "http://${p#* }/metrics" >"$OUT/metrics/${p%% *}.prom" || true
  done
  if [ -n "$PROM" ] && [ -z "$ONLY" ]; then
    echo "==> monitoring: alerting rules and dashboard queries against Prometheus"
    scripts/check-monitoring.py --prometheus "http://$PROM" --rules k8s/monitoring/alerts/chat-alerts.yaml \
      --dashboard k8s/monitoring/dashboards/chat.json
  else
    echo "==> monitoring: skipped (prometheus not installed, or only one scenario run)"
  fi
  unset REDIS_URL
else
  echo "==> distributed: skipped (redis-server not installed)"
fi

SIO=loadtest/socketio
if command -v node >/dev/null && command -v redis-server >/dev/null \
  && { [ -d "$SIO/node_modules" ] || (cd "$SIO" && npm ci --no-audit --no-fund >/dev/null 2>&1); }; then
  echo "==> socketio: Socket.IO cluster with the Redis adapter (2 node processes, private Redis)"
  R=$((BASE+8)); SA=127.0.0.1:$((BASE+9)); SB=127.0.0.1:$((BASE+10))
  start sio-redis redis-server --port "$R" --bind 127.0.0.1 --save "" --appendonly no
  wait_port "127.0.0.1:$R" sio-redis
  REDIS_URL=redis://127.0.0.1:$R PORT=${SA#*:} start sio-a node "$SIO/server.js"; SAPID=$LAST_PID
  REDIS_URL=redis://127.0.0.1:$R PORT=${SB#*:} start sio-b node "$SIO/server.js"; SBPID=$LAST_PID
  wait_port "$SA" sio-a; wait_port "$SB" sio-b
  want connect && lt connect --url "ws://$SA" --encoding socketio --sockets "$CONNECT_SOCKETS" --rate 2000 --processes 2 \
    --source-ips 4 --gateway-pid "$SAPID" --settle 2s --hold 1s --out "$OUT/results/socketio-connect.json"
  want fanout && lt fanout --socketio --api "http://$SA,http://$SB" --ws "ws://$SA,ws://$SB" --gateway-pids "$SAPID,$SBPID" \
    --chats "$FO_CHATS" --members "$FO_MEMBERS" --rate "$FO_RATE" --duration "$FO_SECS" \
    --out "$OUT/results/socketio-fanout.json"
  # Sends enter node A and the receiver is on node B, so every event crosses Redis.
  want latency && for rate in $LAT_RATES; do
    lt latency --socketio --api "http://$SA" --ws "ws://$SB" --rate "$rate" --duration "$LAT_SECS" \
      --out "$OUT/results/socketio-latency-$rate.json" $(plot "socketio-latency-$rate")
  done
else
  echo "==> socketio: skipped (needs node, redis-server and the npm packages of $SIO)"
fi

echo "==> results ($MODE mode, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
if [ "$MODE" = smoke ]; then
  lt report --dir "$OUT/results" --check
else
  lt report --dir "$OUT/results" | tee "$OUT/table.md"
fi
