# Sourced by the measurement scripts (api-cpu.sh, gw-cpu.sh): background processes with their
# logs in $OUT, every one stopped on exit, and a bounded wait for a port to answer.
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; return 1
}
start() { local name=$1; shift; "$@" >"$OUT/$name.log" 2>&1 & LAST_PID=$!; PIDS+=("$LAST_PID"); }
