#!/bin/sh
# The sync benchmark on SQLite and PostgreSQL, one after the other (extra options are passed on,
# e.g. `benchmarks/run.sh --repeat 5`). Add MariaDB with BENCH_DBS="sqlite postgresql mariadb".
set -e
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
for db in ${BENCH_DBS:-sqlite postgresql}; do
    "$python" benchmarks/sync_bench.py --db "$db" "$@"
done
