"""The cost model refitted from executed batches reproduces what those batches took."""

from __future__ import annotations

import random
from dataclasses import asdict, replace

import pytest

from uellm_cli.jobs.results import BatchRecord, StepRecord
from uellm_cli.profile.calibrate import load_calibrations
from uellm_cli.profile.calibration import Calibration
from uellm_cli.profile.run_calibration import (
    features,
    fit_steps,
    observations_path,
    record_batches,
    record_steps,
)

TRUE = Calibration("cpu-x", "hf", "m", prefill=(0.05, 2e-4, 1e-8), decode=(0.02, 0.004, 1e-6))


def _seconds(rows: int, width: int, steps: int) -> float:
    f = features(rows, width, steps)
    coef = TRUE.prefill + TRUE.decode
    return sum(a * c for a, c in zip(f, coef, strict=True))


def _batches(n: int, seed: int = 0) -> list[BatchRecord]:
    rng = random.Random(seed)
    out, t = [], 0.0
    for k in range(n):
        rows, width, steps = rng.choice([1, 2, 4, 8, 16, 32]), rng.randint(16, 300), rng.randint(4, 128)
        dur = _seconds(rows, width, steps)
        out.append(BatchRecord(k, 0, list(range(rows)), t, t + dur, steps, width, rows * steps))
        t += dur
    return out


def test_features_match_the_calibration_form():
    # one prefill plus steps-1 decode steps at contexts L+1 .. L+steps-1
    rows, width, steps = 4, 10, 5
    expect = TRUE.prefill_s(rows, width) + sum(TRUE.decode_s(rows, c) for c in range(11, 15))
    assert abs(_seconds(rows, width, steps) - expect) < 1e-12


def test_refit_from_batches_predicts_their_times():
    batches = _batches(40)
    cal = record_batches(batches, engine="hf", device_name="cpu-x", model="m")
    assert cal is not None and cal.fit_error["source"] == "runs"
    for b in _batches(10, seed=1):  # unseen batches
        got = cal.prefill_s(len(b.rows), b.prompt_width) + sum(
            cal.decode_s(len(b.rows), b.prompt_width + k) for k in range(1, b.steps))
        want = b.finished_s - b.started_s
        assert abs(got - want) / want < 0.02
    # the newest calibration for the device is the run-fitted one
    assert load_calibrations("hf", model="m")["cpu-x"].fit_error["source"] == "runs"


def test_the_threads_a_run_used_are_kept_with_its_fit():
    cal = record_batches(_batches(40), engine="hf", device_name="cpu-th", model="m", threads=2)
    assert cal is not None and cal.fit_error["threads"] == 2
    assert load_calibrations("hf", model="m")["cpu-th"].fit_error["threads"] == 2


def _slowed(batches: list[BatchRecord], factor: float) -> list[BatchRecord]:
    return [BatchRecord(b.batch, b.replica, b.rows, b.started_s * factor, b.finished_s * factor,
                        b.steps, b.prompt_width, b.output_tokens) for b in batches]


def test_batches_run_on_other_threads_are_scaled_to_this_runs():
    one_thread = _slowed(_batches(40, seed=2), 2.0)  # the same work, twice as slow
    record_batches(one_thread, engine="hf", device_name="cpu-mix", model="m", threads=1)
    cal = record_batches(_batches(40), engine="hf", device_name="cpu-mix", model="m", threads=2)
    assert cal is not None and cal.threads == 2 and cal.samples == 80
    for b in _batches(10, seed=1):
        got = cal.prefill_s(len(b.rows), b.prompt_width) + sum(
            cal.decode_s(len(b.rows), b.prompt_width + k) for k in range(1, b.steps))
        assert abs(got - (b.finished_s - b.started_s)) / (b.finished_s - b.started_s) < 0.02


def test_too_few_or_failed_batches_do_not_fit():
    few = _batches(3)
    assert record_batches(few, engine="hf", device_name="cpu-y", model="m") is None
    failed = [BatchRecord(k, 0, [0, 1], 0.0, 1.0, 8, 10, 0, status="error") for k in range(20)]
    assert record_batches(failed, engine="hf", device_name="cpu-z", model="m") is None


def test_a_torn_line_is_skipped():
    batches = _batches(10)
    record_batches(batches[:5], engine="hf", device_name="cpu-t", model="m")
    path = observations_path("hf", "cpu-t", "m")
    with path.open("a") as f:
        f.write('{"rows": 3, "prompt_wi')  # killed mid-write
    with path.open("a") as f:
        f.write("\n")
    cal = record_batches(batches[5:], engine="hf", device_name="cpu-t", model="m")
    assert cal is not None and cal.samples == 10


def _steps(n: int, step_s: float, seed: int = 0) -> list[StepRecord]:
    """Engine steps of d0 + d1 * rows (+ a prefill term), all times multiplied by step_s."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        rows, prefill = rng.randint(1, 32), (rng.randint(16, 256) if k % 5 == 0 else 0)
        out.append(StepRecord(prefill, float(prefill * prefill), rows, rows * 100.0, rows,
                              step_s * (0.1 + 0.003 * rows + 2e-4 * prefill)))
    return out


def test_steps_of_instances_side_by_side_are_fitted_apart_from_one_instance_alone():
    """Two instances sharing a CPU slow each other: their 1-thread steps (twice as slow here)
    must neither blur the fit of a 1-thread instance alone nor stand for it."""
    alone = record_steps(_steps(200, 1.0), engine="vllm", device_name="cpu-s", model="m", threads=1)
    side = record_steps(_steps(200, 2.0, seed=1), engine="vllm", device_name="cpu-s", model="m",
                        threads=1, instances=2)
    assert alone is not None and side is not None
    assert alone.instances == 1 and side.instances == 2
    assert side.decode[0] == pytest.approx(2 * alone.decode[0], rel=0.02)
    assert load_calibrations("vllm", model="m", threads=1)["cpu-s"].decode == alone.decode
    assert load_calibrations("vllm", model="m", threads=1, instances=2)["cpu-s"].decode == side.decode
    again = record_steps(_steps(50, 1.0, seed=2), engine="vllm", device_name="cpu-s", model="m", threads=1)
    assert again is not None and again.decode[0] == pytest.approx(alone.decode[0], rel=0.02)


def test_the_step_model_runs_at_the_speed_of_the_newest_run():
    """Five runs' steps at one speed, then a run 20% slower: the fit over all of them would
    sit in between; the model saved gives the newest run's steps the time they took. A run
    of fewer than SPEED_STEPS steps leaves the fit as it is."""
    for seed in range(5):
        base = record_steps(_steps(200, 1.0, seed=seed), engine="vllm", device_name="cpu-n",
                            model="m", threads=1)
    slower = _steps(300, 1.2, seed=9)
    now = record_steps(slower, engine="vllm", device_name="cpu-n", model="m", threads=1)
    assert base is not None and now is not None
    assert now.decode[0] == pytest.approx(1.2 * base.decode[0], rel=0.02)
    assert now.decode[1] == pytest.approx(1.2 * base.decode[1], rel=0.05)
    assert now.fit_error["last_run_over_fit"] > 1.1
    modelled = sum(now.decode[0] + now.decode[1] * st.decode_rows + now.decode[2] * st.decode_context
                   + now.prefill[1] * st.prefill_tokens + now.prefill[2] * st.prefill_attention
                   for st in slower)
    assert modelled == pytest.approx(sum(st.seconds for st in slower), rel=0.01)
    few = record_steps(_steps(100, 1.5, seed=10), engine="vllm", device_name="cpu-n", model="m",
                       threads=1)  # too few steps to tell the speed: the window's fit stands
    assert few is not None and "last_run_over_fit" not in few.fit_error


def test_the_hosts_time_between_steps_joins_each_steps_constant():
    """A run's steps also wait on the host between them (rows written, plans revised): the
    fit adds their mean to d0, and leaves the terms that grow with a step's contents alone."""
    bare = _steps(300, 1.0)
    gaps = [0.002 if k % 50 else 0.5 for k in range(len(bare))]  # now and then a re-plan
    waited = [replace(s, gap_s=g) for s, g in zip(bare, gaps, strict=True)]
    plain = fit_steps(bare, engine="vllm", device_name="cpu-g", model="m", source="t")
    hosted = fit_steps(waited, engine="vllm", device_name="cpu-g", model="m", source="t")
    mean_gap = sum(gaps) / len(gaps)
    assert hosted.decode[0] == pytest.approx(plain.decode[0] + mean_gap, rel=1e-6)
    assert hosted.prefill[0] == pytest.approx(plain.prefill[0] + mean_gap, rel=1e-6)
    assert hosted.decode[1:] == pytest.approx(plain.decode[1:])
    assert hosted.fit_error["host_s_per_step"] == pytest.approx(mean_gap, abs=1e-6)
    # observations recorded before gaps were measured read as no gap
    old = [{k: v for k, v in asdict(s).items() if k != "gap_s"} for s in bare]
    assert fit_steps(old, engine="vllm", device_name="cpu-g", model="m", source="t").decode == plain.decode
