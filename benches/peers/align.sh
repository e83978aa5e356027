#!/usr/bin/env bash
# Peers of the alignment benchmarks: numpy MMCS, scipy linear_sum_assignment, FAISS
# IndexFlatIP k=1, on the dictionaries that `cargo bench --bench align` wrote to
# $CONCORD_BENCH_RESULTS/align-data. Appends records to $CONCORD_BENCH_RESULTS/align-peers.jsonl.
# Sizes follow the same variables as the Rust side (CONCORD_BENCH_ALIGN_N,
# CONCORD_BENCH_ALIGN_ENCODER, CONCORD_BENCH_D, CONCORD_BENCH_MMCS_N).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${CONCORD_BENCH_RESULTS:=$here/../../target/bench-results}"
: "${CONCORD_PYTHON:=python3}"
export CONCORD_BENCH_RESULTS
exec "$CONCORD_PYTHON" "$here/align_peers.py"
