#!/usr/bin/env bash
# System tools the test suite uses beyond Python packages: Prometheus (server + promtool) for
# the alert-rule and end-to-end scrape tests. Installed from Debian's packages when missing.
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "test-setup: prometheus/promtool missing and not root; install Debian's 'prometheus'" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package starts a system service on install where it can; the tests run their own.
    (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus || true) >/dev/null 2>&1
fi
promtool --version | head -1
