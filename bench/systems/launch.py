"""Run one system in a process of its own and read its peak RSS from the kernel (wait4)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class Launched:
    """How a system's process ended.

    peak_rss_mb: ru_maxrss of the process (and of any child it waited for: the largest one,
    not the sum). wall_s: from spawn to exit, as the parent saw it.
    """

    returncode: int
    wall_s: float
    peak_rss_mb: float
    spawn_wall: float
    timed_out: bool
    log_tail: str


def thread_env(threads: int, extra: dict | None = None) -> dict:
    """The environment of a system process: same thread count for every system."""
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


def launch(cmd: list[str], *, log: Path, env: dict, timeout_s: float,
           cwd: Path | None = None) -> Launched:
    """Spawn `cmd`, wait for it with wait4 (its own rusage), kill its group on timeout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        spawn_wall = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        timed_out = False
        deadline = t0 + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline and not timed_out:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    tail = log.read_text(errors="replace")[-4000:]
    return Launched(returncode=proc.returncode, wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024,
                    spawn_wall=spawn_wall, timed_out=timed_out, log_tail=tail)
