"""How many CPU threads a run computes with: decided once per run, from the idle cores."""

from __future__ import annotations

import os


def choose_cpu_threads(requested: int | None = None) -> int:
    """Threads for CPU matmuls. torch spins on every core it is given, so on a shared machine
    extra threads fight the other processes and a step can run 5-10x slower. We use the cores
    the 1-minute load average says are idle, unless the user (or OMP_NUM_THREADS) says."""
    cores = os.cpu_count() or 1
    if requested:
        return max(1, requested)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        busy = int(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))
