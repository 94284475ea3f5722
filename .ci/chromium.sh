#!/usr/bin/env bash
# Debian's Chromium for the browser test of the Prefect UI (tests/e2e/test_ui.py drives it with Playwright, through
# `executable_path`: Playwright's own browser download cannot reach its host from CI). Prints the binary's path.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "chromium.sh: Chromium is not installed and installing it needs root" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
command -v chromium
