#!/usr/bin/env bash
# Alignment on real SAEs trained by `concord train` (see align_real.py): the whole `concord
# align` command against numpy + scipy on the same weights and codes. Appends records to
# $CONCORD_BENCH_RESULTS/align-real.jsonl. CONCORD_BENCH_REAL_TOKENS=0 skips it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${CONCORD_BENCH_RESULTS:=$here/../../target/bench-results}"
: "${CONCORD_PYTHON:=python3}"
export CONCORD_BENCH_RESULTS
exec "$CONCORD_PYTHON" "$here/align_real.py" "$@"
