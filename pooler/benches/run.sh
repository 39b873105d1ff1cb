#!/usr/bin/env bash
# Runs Teresa's benchmark from scratch: installs what it needs (PostgreSQL 15,
# pgbench, PgBouncer; perf with --profile), builds the release binaries and
# runs `teresa_bench`, which starts its own PostgreSQL, PgBouncer and
# teresa-pooler on 127.0.0.1. Arguments go to the benchmark, e.g.
#
#   pooler/benches/run.sh                 # full run, ~15 min on 2 cores
#   pooler/benches/run.sh --quick         # smoke run, ~2 min
#   pooler/benches/run.sh --help
#
# Results: <target dir>/tmp/teresa-bench/results.{json,md} unless --out is given.
set -euo pipefail
cd "$(dirname "$0")/../.."

export DEBIAN_FRONTEND=noninteractive
missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
command -v pgbench >/dev/null || [ -x /usr/lib/postgresql/15/bin/pgbench ] || missing+=(postgresql-client-15)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
if [[ " $* " == *" --profile "* ]] && ! command -v perf >/dev/null; then
  missing+=(linux-perf)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package enables a system PgBouncer on 6432; the benchmark runs
# its own on a free port and never uses that one.

exec cargo bench -p teresa-pooler --bench teresa_bench -- "$@"
