"""Utilisation sampling during a run: GPU util/memory (NVML) and process CPU time/RSS.

A daemon thread wakes every `interval_s`, reads a few counters and appends a dict; nothing is
computed there beyond a subtraction, so the cost stays far below 1% of the run (the sampler
keeps its own cost in `overhead_s`). NVML (nvidia-ml-py) is imported lazily; without it, or
without a GPU, samples simply carry no GPU entries.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
    _PAGE = 4096


def _rss_bytes() -> int | None:
    """Current resident set size; peak RSS from getrusage where /proc is missing."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):  # pragma: no cover
        return None


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class _Nvml:
    """The handles of the GPUs we watch; empty when NVML is unavailable."""

    def __init__(self, gpu_indices: list[int] | None):
        self.handles: list[tuple[int, Any]] = []
        self.lib = None
        if gpu_indices == []:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            wanted = range(count) if gpu_indices is None else [i for i in gpu_indices if i < count]
            self.handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in wanted]
            self.lib = pynvml
        except Exception:  # no driver, no library, no GPU: CPU-only samples
            self.handles = []

    def read(self) -> list[dict]:
        out = []
        for i, h in self.handles:
            entry: dict[str, Any] = {"index": i, "util_pct": None, "mem_used_bytes": None, "mem_total_bytes": None}
            try:
                entry["util_pct"] = float(self.lib.nvmlDeviceGetUtilizationRates(h).gpu)
                mem = self.lib.nvmlDeviceGetMemoryInfo(h)
                entry["mem_used_bytes"], entry["mem_total_bytes"] = int(mem.used), int(mem.total)
            except Exception:  # a GPU that stops answering should not stop the run
                pass
            out.append(entry)
        return out

    def close(self) -> None:
        if self.lib is not None:
            with contextlib.suppress(Exception):
                self.lib.nvmlShutdown()
            self.lib = None


class UtilisationSampler:
    """Background sampler. Use as a context manager or start()/stop(); then samples().

    Each sample: {"t_s": seconds on the run clock (since t0), "cpu_pct": process CPU time over
    wall time since the previous sample (100 = one core busy), "rss_bytes": int | None,
    "gpus": [{"index", "util_pct", "mem_used_bytes", "mem_total_bytes"}]}.
    """

    def __init__(self, interval_s: float = 1.0, gpu_indices: list[int] | None = None, *,
                 t0: float | None = None, clock: Callable[[], float] | None = None):
        """t0: time.perf_counter() at the run start; or clock: a function giving the run clock."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self.gpu_indices = gpu_indices
        self.t0 = time.perf_counter() if t0 is None else t0
        self.clock = clock
        self.overhead_s = 0.0  # CPU time spent inside _sample (thread_time), to check the <1% budget
        self._samples: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: _Nvml | None = None
        self._last: tuple[float, float] | None = None

    def start(self) -> UtilisationSampler:
        if self._thread is not None:
            return self
        self._nvml = _Nvml(self.gpu_indices)
        self._stop.clear()
        self._last = None
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="uellm-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[dict]:
        """Stop the thread, take one last sample, and return all samples."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))
            self._thread = None
            self._sample()
            if self._nvml is not None:
                self._nvml.close()
        return self.samples()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def samples(self) -> list[dict]:
        with self._lock:
            return list(self._samples)

    def __enter__(self) -> UtilisationSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        cost0 = time.thread_time()
        begin = time.perf_counter()
        cpu = _cpu_seconds()
        cpu_pct = None  # the first sample has no interval behind it
        if self._last is not None and begin > self._last[0]:
            cpu_pct = 100.0 * (cpu - self._last[1]) / (begin - self._last[0])
        sample = {
            "t_s": self.clock() if self.clock is not None else begin - self.t0,
            "cpu_pct": cpu_pct,
            "rss_bytes": _rss_bytes(),
            "gpus": self._nvml.read() if self._nvml is not None else [],
        }
        self._last = (begin, cpu)
        with self._lock:
            self._samples.append(sample)
        self.overhead_s += time.thread_time() - cost0
