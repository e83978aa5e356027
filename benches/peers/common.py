"""Helpers shared by the peer scripts that time whole `concord` commands."""

import os
import subprocess
import time


def run(cmd):
    """Runs a command to completion (progress off, output discarded); returns its seconds."""
    env = dict(os.environ, CONCORD_PROGRESS="0")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def load_csr_pair(data, tokens, nf, who):
    """The correlation bench's two code matrices (CSR, `tokens` x `nf`) that the Rust bench
    wrote under `data`, or None (said on stdout, naming `who`) when they are not there."""
    import numpy as np
    import scipy.sparse as sp

    mats = []
    for name in ("corr_a", "corr_b"):
        base = data / f"{name}_{tokens}x{nf}"
        try:
            indptr = np.fromfile(f"{base}_indptr.u64", dtype="<u8").astype(np.int64)
            indices = np.fromfile(f"{base}_indices.u32", dtype="<u4").astype(np.int32)
            values = np.fromfile(f"{base}_values.f32", dtype="<f4")
        except FileNotFoundError:
            print(f"{who}: no correlation data for {tokens} x {nf} in {data}; run the Rust bench first")
            return None
        mats.append(sp.csr_matrix((values, indices, indptr), shape=(tokens, nf)))
    return mats
