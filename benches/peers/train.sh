#!/usr/bin/env bash
# Peer of the training benchmark: the whole `concord train` command (N and 3N tokens) against a
# plain PyTorch loop of the same math; see train_bench.py. Appends records to
# $CONCORD_BENCH_RESULTS/train.jsonl. CONCORD_BENCH_TRAIN_TOKENS=0 skips it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${CONCORD_BENCH_RESULTS:=$here/../../target/bench-results}"
: "${CONCORD_PYTHON:=python3}"
export CONCORD_BENCH_RESULTS CONCORD_PYTHON
exec "$CONCORD_PYTHON" "$here/train_bench.py" "$@"
