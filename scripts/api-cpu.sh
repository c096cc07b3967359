#!/usr/bin/env bash
# CPU per message (or per push) of the distributed path, from each process's own utime+stime
# (valid on a shared machine, unlike latency): a private redis-server, 2 gateways and one
# `chat-api serve` on SQLite, rate limits off, one chat whose members' sockets are spread over
# both gateways, and a closed loop of 16 requests in flight (docs/BENCHMARKS.md, "CPU per
# message").
#
#   scripts/api-cpu.sh [messages|push] [seconds]   (default: messages 15)
#
# MEMBERS (default 4) sets the chat's size; RATE=N an open loop of N requests/s; PERF=1 also records the API under
# `perf record -e cpu-clock -g` for 10 s of the run (perf.data in the output directory), and
# PERF_STAT=1 counts the API's context switches and system calls per request (`perf stat`);
# EMBEDDED=1 measures `chat-api embedded` (one process) instead. BIN defaults to target/dist
# (`cargo build --profile dist -p chat-api -p gateway -p loadtest --bins`); LOADTEST overrides
# the load generator alone (to measure older servers with this one).
set -euo pipefail
MODE=${1:-messages}
SECS=${2:-15}
MEMBERS=${MEMBERS:-4}
BIN=${BIN:-target/dist}
OUT=${OUT:-$(mktemp -d /tmp/api-cpu.XXXXXX)}
mkdir -p "$OUT"
BASE=$(( 20000 + ($$ % 2000) * 10 ))
export JWT_SECRET="api-cpu-$(date +%s)-0123456789abcdefghijklmnopqrstuv"
export API_RATE_REQUESTS=off API_RATE_MESSAGES=off CONNECT_RATE_PER_IP=off MAX_HANDSHAKES_PER_IP=100000
export LOG_FORMAT=text RUST_LOG=${RUST_LOG:-warn}
. "$(dirname "$0")/proc-lib.sh"
# utime+stime of a process in clock ticks
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

MODE_FLAG=""
# RATE=N sends N requests per second (open loop) instead of the closed loop of 16 in flight.
LOOP="--closed-loop --max-in-flight 16"
if [ -n "${RATE:-}" ]; then LOOP="--rate $RATE"; fi
if [ "$MODE" = push ]; then MODE_FLAG=--push; fi
if [ "${EMBEDDED:-0}" = 1 ]; then
  API=127.0.0.1:$((BASE+1)); GA=127.0.0.1:$((BASE+2))
  DATA_DIR=$OUT/embedded API_ADDR=$API GATEWAY_ADDR=$GA start embedded "$BIN/chat-api" embedded
  APIPID=$LAST_PID; WATCH=("api:$APIPID"); WS="ws://$GA/ws"
  wait_port "$API"; wait_port "$GA"
else
  R=$((BASE+3)); GA=127.0.0.1:$((BASE+4)); GB=127.0.0.1:$((BASE+5)); API=127.0.0.1:$((BASE+6))
  start redis redis-server --port "$R" --bind 127.0.0.1 --save "" --appendonly no
  RPID=$LAST_PID
  wait_port "127.0.0.1:$R"
  export REDIS_URL=redis://127.0.0.1:$R
  NODE_ID=gw-a GATEWAY_ADDR=$GA start gw-a "$BIN/gateway"; GAPID=$LAST_PID
  NODE_ID=gw-b GATEWAY_ADDR=$GB start gw-b "$BIN/gateway"; GBPID=$LAST_PID
  WORKER_ID=1 STORE_URL=sqlite:$OUT/chat.db API_ADDR=$API start api "$BIN/chat-api" serve
  APIPID=$LAST_PID
  wait_port "$API"; wait_port "$GA"; wait_port "$GB"
  WATCH=("api:$APIPID" "redis:$RPID" "gw-a:$GAPID" "gw-b:$GBPID"); WS="ws://$GA/ws,ws://$GB/ws"
  redis-cli -p "$R" config resetstat >/dev/null
fi
declare -A BEFORE
for w in "${WATCH[@]}"; do BEFORE[$w]=$(ticks "${w#*:}"); done
if [ "${PERF:-0}" = 1 ]; then
  (sleep 3; perf record -e cpu-clock -g -o "$OUT/perf.data" -p "$APIPID" -- sleep 10 \
    >"$OUT/perf.log" 2>&1) &
  PERF_PID=$!
fi
if [ "${PERF_STAT:-0}" = 1 ]; then
  perf stat -x, -e context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait \
    -p "$APIPID" -o "$OUT/perf-stat.csv" &
  STAT_PID=$!
fi
"${LOADTEST:-$BIN/loadtest}" fanout --api "http://$API" --ws "$WS" --chats 1 --members "$MEMBERS" \
  $LOOP --duration "${SECS}s" --drain 3s $MODE_FLAG \
  --out "$OUT/result.json" | tee "$OUT/loadtest.txt"
if [ -n "${PERF_PID:-}" ]; then wait "$PERF_PID"; fi
if [ -n "${STAT_PID:-}" ]; then kill -INT "$STAT_PID"; wait "$STAT_PID" || true; fi
ACKED=$(python3 -c "import json;print(json.load(open('$OUT/result.json'))['acknowledged'])")
FRAMES=$(python3 -c "import json;print(json.load(open('$OUT/result.json'))['frames_received'])")
echo "requests acknowledged: $ACKED, frames delivered: $FRAMES (output: $OUT)"
TOTAL=0
for w in "${WATCH[@]}"; do
  d=$(( $(ticks "${w#*:}") - ${BEFORE[$w]} ))
  TOTAL=$((TOTAL + d))
  awk -v n="${w%%:*}" -v d="$d" -v hz="$HZ" -v a="$ACKED" -v f="$FRAMES" 'BEGIN {
    printf "%-6s cpu %.2f s: %.1f us per request, %.1f us per delivered frame\n",
      n, d/hz, d/hz*1e6/a, d/hz*1e6/f }'
done
awk -v d="$TOTAL" -v hz="$HZ" -v a="$ACKED" -v f="$FRAMES" 'BEGIN {
  printf "all    cpu %.2f s: %.1f us per request, %.1f us per delivered frame\n",
    d/hz, d/hz*1e6/a, d/hz*1e6/f }'
if [ -n "${STAT_PID:-}" ]; then
  # The API's kernel events per request, counted over the whole run (drain included).
  awk -F, -v a="$ACKED" '$1 ~ /^[0-9]+$/ { printf "  api %-28s %8.2f per request\n", $3, $1/a }' "$OUT/perf-stat.csv"
fi
if [ -n "${R:-}" ]; then
  redis-cli -p "$R" info commandstats | grep -v '^#' | tr -d '\r' | sed '/^$/d' > "$OUT/commandstats.txt"
  awk -F'[:=,]' -v a="$ACKED" '{ sub("cmdstat_", "", $1); printf "  %-16s %8.2f calls per request\n", $1, $3/a }' "$OUT/commandstats.txt"
  # Socket reads Redis served (every client, gateways included): its round trips, batched or not.
  redis-cli -p "$R" info stats | tr -d '\r' | awk -F: -v a="$ACKED" '$1 == "total_reads_processed" {
    printf "redis socket reads: %.2f per request (all clients)\n", $2/a }'
fi
