#!/usr/bin/env bash
# The `concord_align` Python package (crates/concord-align-py, which `cargo xtask bench`
# installs into the project's environment) timed from Python on the alignment benchmarks'
# cases, beside numpy and scipy. Appends records to $CONCORD_BENCH_RESULTS/align-py.jsonl.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${CONCORD_BENCH_RESULTS:=$here/../../target/bench-results}"
: "${CONCORD_PYTHON:=python3}"
export CONCORD_BENCH_RESULTS
exec "$CONCORD_PYTHON" "$here/align_py.py"
