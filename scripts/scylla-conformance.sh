#!/usr/bin/env bash
# Runs what the CI machines cannot: the message-store conformance suite and the chaos scenarios
# against a real ScyllaDB, once per pinned server version, in Docker. For each image it starts a
# one-node ScyllaDB on a loopback port, applies `chat-api migrate` (twice: the second run must
# change nothing), runs `chat-api/tests/scylla_conformance.rs` with SCYLLA_URI, then runs
# `chat-api/tests/chaos.rs` with the API replicas on a migrated ScyllaDB keyspace
# (CHAT_TEST_STORE_URL), and removes the container.
#
# Usage: scripts/scylla-conformance.sh            # every pinned image
#        SCYLLA_IMAGES="scylladb/scylla:6.2" scripts/scylla-conformance.sh
#        SKIP_CHAOS=1 scripts/scylla-conformance.sh   # the store suite only
# Needs: docker, cargo, redis-server (the chaos scenarios start private Redis servers).
set -euo pipefail
cd "$(dirname "$0")/.."

# 6.2: the last open-source release (tablets on by default for new keyspaces); 2025.4: the newest
# 2025.x release line (tablets on by default, source-available).
images=${SCYLLA_IMAGES:-"scylladb/scylla:6.2 scylladb/scylla:2025.4"}
ready_timeout_s=${SCYLLA_READY_TIMEOUT_S:-240}

command -v docker >/dev/null || { echo "docker is needed" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cargo is needed" >&2; exit 1; }
if [[ -z "${SKIP_CHAOS:-}" ]] && ! command -v redis-server >/dev/null; then
    echo "redis-server is needed for the chaos scenarios (or set SKIP_CHAOS=1)" >&2
    exit 1
fi

containers=()
cleanup() {
    for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

echo "==> building (the same target selection as scripts/test.sh)"
cargo build --workspace --bins --tests
chat_api=$(pwd)/target/debug/chat-api

results=()
for image in $images; do
    name="chat-conformance-$$-${image//[^a-zA-Z0-9]/-}"
    echo "==> $image: starting ScyllaDB ($name)"
    docker run -d --name "$name" -p 127.0.0.1::9042 "$image" \
        --smp 1 --memory 1G --overprovisioned 1 --developer-mode 1 >/dev/null
    containers+=("$name")
    addr=$(docker port "$name" 9042/tcp | head -n1)
    deadline=$((SECONDS + ready_timeout_s))
    until docker exec "$name" cqlsh -e 'SELECT release_version FROM system.local' >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            docker logs --tail 50 "$name" >&2
            echo "FAIL: $image did not accept CQL within ${ready_timeout_s}s" >&2
            exit 1
        fi
        sleep 2
    done
    version=$(docker exec "$name" scylla --version 2>/dev/null || echo "?")
    echo "    ScyllaDB $version on $addr"

    stamp=$(date +%s)
    echo "==> $image: chat-api migrate (twice) and the refusal of consistency=ONE"
    STORE_URL="scylla://$addr/migrate_$stamp" "$chat_api" migrate --replication 1
    STORE_URL="scylla://$addr/migrate_$stamp" "$chat_api" migrate --replication 1
    if STORE_URL="scylla://$addr/migrate_$stamp?consistency=ONE" REDIS_URL=redis://127.0.0.1:1 \
        JWT_SECRET=conformance-secret-0123456789abcdef "$chat_api" serve 2>"/tmp/$name.err"; then
        echo "FAIL: serve accepted consistency=ONE" >&2
        exit 1
    fi
    grep -q consistency "/tmp/$name.err" || { cat "/tmp/$name.err" >&2; echo "FAIL: the refusal does not name consistency" >&2; exit 1; }

    echo "==> $image: store conformance suite"
    SCYLLA_URI="$addr" cargo test -p chat-api --test scylla_conformance -- --ignored --test-threads=1

    if [[ -z "${SKIP_CHAOS:-}" ]]; then
        echo "==> $image: chaos scenarios on ScyllaDB"
        STORE_URL="scylla://$addr/chaos_$stamp" "$chat_api" migrate --replication 1
        CHAT_TEST_STORE_URL="scylla://$addr/chaos_$stamp" \
            cargo test -p chat-api --test chaos -- --test-threads=1
    fi
    results+=("$image ($version): passed")
    docker rm -f "$name" >/dev/null
done

echo "==> summary"
printf '    %s\n' "${results[@]}"
