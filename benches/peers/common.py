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
