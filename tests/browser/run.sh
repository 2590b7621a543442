#!/usr/bin/env bash
# The dashboard's browser test: builds the gateway, installs playwright-core
# (no browser download: it drives Debian's /usr/bin/chromium) and runs
# dashboard.test.mjs against a real `canary-gateway demo` on loopback.
# Needs: node/npm and chromium (`apt-get install -y chromium`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
cargo build --quiet --bin canary-gateway
export GATEWAY_BIN="${GATEWAY_BIN:-$root/target/debug/canary-gateway}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  echo "no chromium at $CHROMIUM: apt-get install -y chromium" >&2
  exit 1
fi
cd "$here"
if [ ! -d node_modules/playwright-core ]; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
fi
exec node dashboard.test.mjs
