#!/usr/bin/env bash
# The PostgreSQL journal tests start a throwaway server from the machine's PostgreSQL 15
# binaries. Install them (Debian package postgresql-15) when they are missing and we may.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing postgresql-15 for the journal tests" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
else
  echo "PostgreSQL server binaries not found: install postgresql-15 (or set CI=false to skip)" >&2
fi
