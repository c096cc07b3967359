#!/usr/bin/env bash
# Browser client tests: unit tests of chat-api/web/client.js under Node's test runner, then the
# demo page end to end in headless Chromium (Debian's `chromium`, driven by playwright-core) against
# a real `chat-api embedded`. Installs chromium, Node and the npm dependencies when missing.
# Output (screenshots, server logs): target/web-e2e/. Set CHAT_API_BIN to skip the cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  echo "==> installing $* (apt)"
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 18 ]; then
  echo "Node.js >= 18 is needed (found $(node --version))" >&2
  exit 1
fi
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$CHROMIUM" ]; then
  apt_install chromium
  CHROMIUM=$(command -v chromium)
fi
export CHROMIUM

E2E=chat-api/web/e2e
# Reinstall when the lock file changed since the last install.
if [ ! -d "$E2E/node_modules/playwright-core" ] || [ "$E2E/package-lock.json" -nt "$E2E/node_modules/.package-lock.json" ]; then
  echo "==> npm ci ($E2E)"
  (cd "$E2E" && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
fi

echo "==> client library unit tests (node --test)"
timeout 120 node --test chat-api/web/test/

echo "==> client.d.ts type check (tsc)"
(cd "$E2E" && timeout 120 npm run --silent types)

if [ -z "${CHAT_API_BIN:-}" ]; then
  echo "==> cargo build (the selection scripts/test.sh builds)"
  cargo build --workspace --bins --tests
  CHAT_API_BIN=$(pwd)/target/debug/chat-api
fi
export CHAT_API_BIN
export WEB_E2E_OUT=${WEB_E2E_OUT:-$(pwd)/target/web-e2e}

echo "==> browser end-to-end test ($CHROMIUM)"
(cd "$E2E" && timeout 300 node --test --test-reporter=spec e2e.test.mjs)
echo "screenshot: $WEB_E2E_OUT/demo.png"
