#!/usr/bin/env bash
# Gateway CPU per delivery, the gateway alone (docs/BENCHMARKS.md, "Gateway CPU per delivery"):
# a private redis-server, one gateway, MessagePack sockets held by `loadtest connect`, and
# `scripts/drive-node-stream.py` appending envelopes straight to the gateway's node stream (no
# chat-api). Prints the gateway's own utime+stime per message and frames per CPU-second, which
# are usable on a shared machine (latency is not).
#
#   scripts/gw-cpu.sh SOCKETS FANOUT RATE [SECONDS]   e.g. 200 2 2000 10, or 1000 1000 50 10
#
# GATEWAY overrides the gateway binary (default $BIN/gateway, BIN defaults to target/dist);
# PERF=1 also records the gateway under `perf record -e cpu-clock -F 999 -g` for the driven
# seconds (perf.data in the output directory). Extra gateway settings pass through the
# environment (e.g. WS_COMPRESSION=off).
set -euo pipefail
SOCKETS=$1 FANOUT=$2 RATE=$3 SECS=${4:-10}
BIN=${BIN:-target/dist}
GATEWAY=${GATEWAY:-$BIN/gateway}
OUT=${OUT:-$(mktemp -d /tmp/gw-cpu.XXXXXX)}
mkdir -p "$OUT"
BASE=$(( 21000 + ($$ % 1100) * 10 ))
R=$((BASE+1)); GA=127.0.0.1:$((BASE+2))
export JWT_SECRET="gw-cpu-$(date +%s)-0123456789abcdefghijklmnopqrstuv"
export CONNECT_RATE_PER_IP=off MAX_HANDSHAKES_PER_IP=100000
export LOG_FORMAT=text RUST_LOG=${RUST_LOG:-warn}
. "$(dirname "$0")/proc-lib.sh"
start redis redis-server --port "$R" --bind 127.0.0.1 --save "" --appendonly no
wait_port "127.0.0.1:$R"
REDIS_URL=redis://127.0.0.1:$R NODE_ID=gw-cpu GATEWAY_ADDR=$GA start gateway "$GATEWAY"
GPID=$LAST_PID
wait_port "$GA"
SETTLE=3
start loadtest "$BIN/loadtest" connect --url "ws://$GA/ws" --sockets "$SOCKETS" --encoding msgpack \
  --processes 1 --source-ips 4 --rate 2000 --settle 1s --hold "$((SECS + SETTLE + 4))s"
sleep "$SETTLE"
if [ "${PERF:-0}" = 1 ]; then
  perf record -e cpu-clock -F 999 -g -o "$OUT/perf.data" -p "$GPID" -- sleep "$SECS" \
    >"$OUT/perf.log" 2>&1 &
  PERF_PID=$!
fi
python3 scripts/drive-node-stream.py "$R" gw-cpu "$GPID" "$SOCKETS" "$FANOUT" "$RATE" "$SECS" \
  | tee "$OUT/result.txt"
if [ -n "${PERF_PID:-}" ]; then wait "$PERF_PID" || true; fi
curl -s "http://$GA/metrics" >"$OUT/metrics.txt" || true
grep -E '^gateway_(frames_out_total|send_queue_drops_total|deliveries_total|stream_batch_size_(sum|count)) ' \
  "$OUT/metrics.txt" || true
echo "output: $OUT"
