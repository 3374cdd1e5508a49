#!/usr/bin/env bash
# Runs the portal's browser test: builds cardgate, then drives the portal in
# Debian's headless Chromium against processes the test starts on loopback.
# Installing Chromium needs root (apt-get). npm installs only playwright-core,
# which downloads no browser.
set -euo pipefail

cd "$(dirname "$0")/../.."

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "run.sh: /usr/bin/chromium is missing; install Debian's chromium package as root" >&2
        exit 1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi

(cd tests/portal && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)

cargo build

node --test --test-concurrency=1 tests/portal/portal.test.mjs
