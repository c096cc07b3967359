#!/usr/bin/env bash
# Many idle sockets on one machine whose processes are capped in descriptors (e.g. 20,000): K
# embedded nodes (gateway and API in one process each), each holding PER sockets from its own
# `loadtest connect`, all at once; prints the machine's TCP sockets in use, the nodes' RSS and the
# kernel's slab every 3 s and each node's figure (docs/BENCHMARKS.md "One million sockets").
#   K=53 PER=19000 [HOLD=40s THREADS=N ARENAS=N BIN=target/dist OUT=dir] scripts/sockets-on-one-node.sh
# Needs root for the sysctls; loopback only; every process started here is stopped at the end.
BIN=${BIN:-target/dist}; cd "$(dirname "$0")/.." && cd "$BIN"
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
DATA=$(mktemp -d)
exec > >(tee "$OUT/run.log") 2>&1
K=${K:-53}; PER=${PER:-19000}
sysctl -w net.ipv4.ip_local_port_range="1024 65000" net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 >/dev/null
echo "$(date +%T) before: $(grep TCP: /proc/net/sockstat) $(grep -E 'MemAvailable|^Slab' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
PIDS=()
for i in $(seq 1 $K); do
  D=$DATA/node-$i; mkdir -p "$D"
  env RUST_LOG=error ${THREADS:+TOKIO_WORKER_THREADS=$THREADS} ${ARENAS:+MALLOC_ARENA_MAX=$ARENAS} CONNECT_RATE_PER_IP=off MAX_HANDSHAKES_PER_IP=100000 DATA_DIR=$D \
    GATEWAY_ADDR=127.0.0.1:$((10000+i)) API_ADDR=127.0.0.1:$((20000+i)) \
    ./chat-api embedded > "$OUT/api-$i.log" 2>&1 &
  PIDS+=($!)
done
sleep 3
BASE=0; for p in "${PIDS[@]}"; do BASE=$((BASE + $(awk '/VmRSS/{print $2}' /proc/$p/status))); done
echo "$K nodes up, total RSS ${BASE} kB"
LTS=()
for i in $(seq 1 $K); do
  timeout 300 ./loadtest connect --url ws://127.0.0.1:$((10000+i))/ws --sockets $PER --checkpoints $PER \
    --rate 2500 --processes 1 --source-ips 64 --user-prefix n$i --gateway-pid ${PIDS[$((i-1))]} \
    --settle 5s --hold ${HOLD:-40s} --out "$OUT/connect-$i.json" > "$OUT/connect-$i.log" 2>&1 &
  LTS+=($!)
done
PEAK=0
for t in $(seq 1 60); do
  sleep 3
  OPEN=$(awk '/TCP:/{print $3}' /proc/net/sockstat)
  R=0; for p in "${PIDS[@]}"; do R=$((R + $(awk '/VmRSS/{print $2}' /proc/$p/status))); done
  echo "$(date +%T) tcp_inuse=$OPEN nodes_rss_kB=$R $(grep TCP: /proc/net/sockstat) $(grep -E '^Slab|SUnreclaim' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
  if [ "$OPEN" -gt "$PEAK" ]; then PEAK=$OPEN; PEAKRSS=$R; PEAKSTAT="$(cat /proc/net/sockstat | tr '\n' ' ') $(grep -E 'MemAvailable|^Slab|SUnreclaim|MemTotal' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"; fi
  alive=0; for l in "${LTS[@]}"; do kill -0 $l 2>/dev/null && alive=1; done; [ $alive = 0 ] && break
done
echo "PEAK tcp_inuse=$PEAK (both ends) nodes_rss_kB=$PEAKRSS base_kB=$BASE"
echo "PEAK $PEAKSTAT"
echo "per-node results:"; for i in $(seq 1 $K); do grep -hE "^ +$PER |failures" "$OUT/connect-$i.log" | tr '\n' ' '; echo; done | sort | uniq -c | head -20
for p in "${PIDS[@]}"; do kill $p; done; for p in "${PIDS[@]}"; do wait $p 2>/dev/null; done
rm -rf "$DATA"; echo "logs and results: $OUT"; exit 0
