#!/usr/bin/env bash
# Make PostgreSQL server binaries available for the PostgreSQL deployment test (tests/e2e/test_deployment.py).
# Installs Debian's `postgresql` if no initdb is found. It starts nothing: the test starts its own throwaway
# cluster on 127.0.0.1 (as the `postgres` user when run as root) and stops it by PID.
# Prints the folder holding initdb/postgres; exits 1 (with the reason) if they cannot be had.
set -euo pipefail

find_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && { echo "$dir"; return 0; }
    done
    command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
    return 1
}

if bindir=$(find_bindir); then
    echo "$bindir"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "postgres.sh: PostgreSQL is not installed and installing it needs root" >&2
    exit 1
fi
# Debian's package would otherwise create and start a `main` cluster on port 5432 that nobody asked for.
mkdir -p /etc/postgresql-common
if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
    echo "create_main_cluster = false" >>/etc/postgresql-common/createcluster.conf
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends postgresql >&2
if ! bindir=$(find_bindir); then
    echo "postgres.sh: installed postgresql but found no initdb under /usr/lib/postgresql/*/bin" >&2
    exit 1
fi
echo "$bindir"
