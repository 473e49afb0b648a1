"""This machine's CPU: name, cores, memory, and a quick measurement of its memory bandwidth and
matmul FLOP/s with numpy (no torch). The measurement takes well under a second and is cached
in UELLM_HOME/profiles/cpu.json, keyed by CPU, cores and thread setting, so detection stays fast.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from uellm_cli.paths import home_dir

COPY_BYTES = 64 << 20  # larger than any L3, so the copy runs at DRAM speed
MATMUL_N = 512
REPEATS = 20
QUIETER_BY = 0.5  # load average (cores) below the measurement's that calls for a new one


def cpu_info() -> dict:
    """Name, usable cores, total memory and memory available now (cgroup limits respected)."""
    name = platform.processor() or platform.machine() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    total, available = _memory()
    return {"name": name, "cores": cores, "total_bytes": total, "available_bytes": available}


def _memory() -> tuple[int, int]:
    meminfo: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                meminfo[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    total = meminfo.get("MemTotal") or _sysconf_memory()
    available = meminfo.get("MemAvailable") or total
    limit = _cgroup_limit()
    if limit:
        total, available = min(total, limit), min(available, limit)
    return int(total), int(available)


def _sysconf_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _cgroup_limit() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def measured_cpu(info: dict, *, refresh: bool = False) -> dict:
    """{"flops", "mem_bandwidth"} of this CPU, from the cache or measured now.

    A measurement taken while other work loaded the machine reads low (12x low was seen here,
    during a pip install), and every forecast would inherit it. So each one records the load
    average it ran under; when the machine is now quieter by more than half a core, the CPU is
    measured again and the better of the two readings of each number is kept."""
    key = f"{info['name']}|{info['cores']}|threads={os.environ.get('OMP_NUM_THREADS', '')}"
    path = home_dir() / "profiles" / "cpu.json"
    load = _load_average()
    cached = None
    if not refresh:
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = None
        if cached is not None and cached.get("key") != key:
            cached = None
        if cached is not None and load + QUIETER_BY < float(cached.get("load_1m", "inf")):
            fresh = benchmark()
            cached = {**cached, "load_1m": load,
                      "flops": max(cached["flops"], fresh["flops"]),
                      "mem_bandwidth": max(cached["mem_bandwidth"], fresh["mem_bandwidth"])}
            _save(path, cached)
        if cached is not None:
            return cached
    result = {"key": key, **benchmark(), "load_1m": load,
              "measured_at": datetime.now(timezone.utc).isoformat()}
    _save(path, result)
    return result


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _save(path: Path, doc: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2))
    except OSError:
        pass  # a read-only home only costs the measurement next time


def benchmark() -> dict:
    """Best of a few runs: copy bandwidth (bytes read + written per second) and float32
    matmul FLOP/s with numpy's BLAS (the same kind of kernels torch uses on the CPU)."""
    import numpy as np

    src = np.ones(COPY_BYTES, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    copy = min(_timed(np.copyto, dst, src) for _ in range(REPEATS))
    a = np.random.default_rng(0).random((MATMUL_N, MATMUL_N), dtype=np.float32)
    a @ a
    mm = min(_timed(np.matmul, a, a) for _ in range(REPEATS))
    return {"mem_bandwidth": 2 * COPY_BYTES / copy, "flops": 2 * MATMUL_N**3 / mm}


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return max(time.perf_counter() - t, 1e-9)
