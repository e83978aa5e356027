#!/usr/bin/env bash
# Peer of the harvest benchmark: the whole `concord harvest` command (N and 3N tokens) against
# transformers' truncated forward, interleaved; see harvest_bench.py. Appends records to
# $CONCORD_BENCH_RESULTS/harvest.jsonl. CONCORD_BENCH_HARVEST_TOKENS=0 skips it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${CONCORD_BENCH_RESULTS:=$here/../../target/bench-results}"
: "${CONCORD_PYTHON:=python3}"
export CONCORD_BENCH_RESULTS
exec "$CONCORD_PYTHON" "$here/harvest_bench.py" "$@"
