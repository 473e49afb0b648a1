"""The utilisation sampler collects samples on the run clock and stops."""

from __future__ import annotations

import sys
import threading
import time

from uellm_cli.report.sampler import UtilisationSampler


def _wait_for(pred, timeout=10.0):
    """Poll (not a timing assertion): return as soon as pred() holds."""
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        time.sleep(0.01)
    return pred()


def test_sampler_collects_and_stops():
    t0 = time.perf_counter() - 100.0  # the run started 100 s ago
    with UtilisationSampler(interval_s=0.01, gpu_indices=[], t0=t0) as s:
        assert s.running
        assert _wait_for(lambda: len(s.samples()) >= 3)
    assert not s.running
    samples = s.samples()
    assert not any(t.name == "uellm-sampler" for t in threading.enumerate())
    assert len(s.samples()) == len(samples)  # nothing more arrives after stop
    times = [x["t_s"] for x in samples]
    assert times == sorted(times) and times[0] >= 100.0
    assert samples[0]["cpu_pct"] is None  # no interval yet at the first sample
    assert all(x["cpu_pct"] >= 0 for x in samples[1:])
    assert all(x["rss_bytes"] > 0 for x in samples)
    assert all(x["gpus"] == [] for x in samples)
    assert s.overhead_s >= 0


def test_sampler_uses_the_given_clock():
    ticks = iter(range(1000))
    s = UtilisationSampler(interval_s=0.01, gpu_indices=[], clock=lambda: float(next(ticks)))
    s.start()
    _wait_for(lambda: len(s.samples()) >= 2)
    samples = s.stop()
    assert [x["t_s"] for x in samples] == [float(i) for i in range(len(samples))]


def test_sampler_without_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    s = UtilisationSampler(interval_s=10.0)
    s.start()
    samples = s.stop()
    assert len(samples) == 2  # one at start, one at stop
    assert all(x["gpus"] == [] for x in samples)
