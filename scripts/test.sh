#!/usr/bin/env bash
# The whole test suite, as the README's test command. Installs what the tests need when it is
# missing (redis-server for the private Redis servers the tests start, faketime for a replica with
# a skewed clock), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "==> installing redis-server (the tests start their own private servers)"
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v faketime >/dev/null; then
  echo "==> installing faketime (tests run an API replica with its clock shifted)"
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust from https://rustup.rs" >&2
  exit 1
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo test (workspace)"
# One target selection for every build here (tests, the gateway binary the chat-api tests start,
# the bench smoke run): another selection unifies dependency features differently and rebuilds
# much of the dependency graph.
cargo build --workspace --bins --tests
cargo test --workspace --no-fail-fast

echo "==> benchmark smoke run (debug binaries, seconds; checks the bench script still works)"
./scripts/bench.sh --smoke

echo "==> Kubernetes manifests"
./scripts/validate-k8s.sh

echo "==> browser client and demo page (headless Chromium)"
CHAT_API_BIN=$(pwd)/target/debug/chat-api ./scripts/test-web.sh
