"""A CPU calibration is only as fast as the threads it was measured with: a run (or a Ray CPU
slot) with fewer threads is forecast slower, never faster with more."""

from __future__ import annotations

from pathlib import Path

import pytest

from uellm_cli.config import RunConfig
from uellm_cli.profile.calibration import Calibration
from uellm_cli.profile.devices import Cluster, Device
from uellm_cli.run.planning import for_cpu_threads


def _for_run_threads(cfg: RunConfig, cluster: Cluster, cals: dict) -> dict:
    """The calibrations a run with cfg.threads threads plans with."""
    return for_cpu_threads(cals, cluster, cfg.threads)


def _cal(threads: int | None) -> Calibration:
    fit = {"threads": threads} if threads else {}
    return Calibration("cpu-a", "hf", "m", (0.01, 1e-5, 1e-9), (0.002, 1e-4, 1e-8), fit_error=fit)


def test_fewer_threads_than_measured_is_slower_in_proportion():
    cal = _cal(4)
    one = cal.for_threads(1)
    assert one.threads == 4  # what it was measured with stays on record
    assert one.prefill_s(8, 200) == pytest.approx(4 * cal.prefill_s(8, 200))
    assert one.decode_s(8, 300) == pytest.approx(4 * cal.decode_s(8, 300))
    assert cal.for_threads(2).decode_s(1, 10) == pytest.approx(2 * cal.decode_s(1, 10))


def test_more_threads_or_no_record_leave_it_as_measured():
    assert _cal(2).for_threads(8) == _cal(2)
    assert _cal(None).for_threads(1) == _cal(None)
    assert _cal(None).for_threads(1, measured=2).decode == tuple(2 * x for x in _cal(None).decode)


def test_filed_under_another_device_it_says_where_it_came_from():
    slot = _cal(2).for_threads(2, device_name="cpu-a (Ray slot, 2 CPUs)")
    assert slot.device_name == "cpu-a (Ray slot, 2 CPUs)" and slot.decode == _cal(2).decode
    assert slot.fit_error["derived_from"] == "cpu-a"


def test_a_run_on_fewer_threads_plans_with_a_slowed_cpu_calibration():
    cpu = Device("cpu", "cpu-a", "cpu", 8 * 2**30, 1e11, 1e10, cores=2)
    cluster = Cluster([cpu])
    cals = {"cpu-a": _cal(2), "gpu-b": _cal(2)}
    cfg = RunConfig(job=Path("j"), out=Path("o"), threads=1)
    out = _for_run_threads(cfg, cluster, cals)
    assert out["cpu-a"].decode_s(4, 100) == pytest.approx(2 * cals["cpu-a"].decode_s(4, 100))
    assert out["gpu-b"] is cals["gpu-b"]  # no device of that name here: untouched
    assert _for_run_threads(RunConfig(job=Path("j"), out=Path("o"), threads=2), cluster, cals)["cpu-a"] \
        == cals["cpu-a"]
