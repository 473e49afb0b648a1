"""Calibrate the cost model from what real runs executed: the batches of the hf engine, the
steps of the vLLM engine.

A grid calibration (`uellm profile --calibrate`) times bare forward passes; a real batch also
pays for `generate`'s loop, padding and sampling, and runs under whatever else the machine is
doing. Every finished run therefore records what it ran and refits the same Calibration form
on it, so the next forecast is made from what this engine really did on this device:
- hf, per batch (rows, prompt width, steps, seconds): one prefill, then decode steps;
- vLLM, per engine step (prefill tokens and attention, decode rows and context, seconds;
  engine/vllm_steps.py): d0 + d1 * rows + d2 * context + p1 * prefill + p2 * attention, the
  step-time model of plan/steptime.py, stored as Calibration(prefill=(d0, p1, p2),
  decode=(d0, d1, d2)), with the host's mean time between steps added to d0.
Stored beside the grid calibration; the newest one wins. Each run also records how long its
engine took to start (record_startup), which the next plan's start-up forecast uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from uellm_cli.jobs.durable import atomic_write_json
from uellm_cli.jobs.results import StepRecord
from uellm_cli.profile.calibrate import _slug, calibrations_dir, fit
from uellm_cli.profile.calibration import Calibration

KEEP_BATCHES = 2000  # newest observations used for the fit
MIN_BATCHES = 6
MIN_BATCH_SIZES = 2  # distinct batch sizes needed to tell per-row from per-step costs
KEEP_STEPS = 10_000  # newest engine steps used for the fit
STEPS_PER_RUN = 2000  # a run's steps, evenly thinned to at most this many
MIN_STEPS = 30
# A run of fewer steps does not set the model's speed (at_speed_of): the 8-row demo job ran
# ~100 steps of 1-8 rows, whose fit error says more about the model's shape than the speed;
# the re-planner measures the speed over as many (run/replan.py, STEP_WINDOW)
SPEED_STEPS = 256
MIN_PREFILL_STEPS = 3  # steps with prompt tokens, to tell prefill from decode costs
STARTUPS_KEPT = 5  # recent engine start-ups the start-up forecast takes the median of


def observations_path(engine: str, device_name: str, model: str, kind: str = "batches") -> Path:
    return calibrations_dir() / _slug(engine) / f"{_slug(device_name)}--{_slug(model)}--{kind}.jsonl"


def features(batch: int, prompt_tokens: int, steps: int) -> tuple[float, ...]:
    """Coefficient multipliers of one batch's time under the cost model's convention: one
    prefill of batch x prompt_tokens, then steps-1 decode steps at contexts L+1 .. L+steps-1."""
    b, n_prompt = float(batch), float(prompt_tokens)
    n = max(0, steps - 1)
    ctx_sum = n * n_prompt + n * (n + 1) / 2.0
    return (1.0, b * n_prompt, b * n_prompt * n_prompt, float(n), b * n, b * ctx_sum)


def record_batches(
    batches: Iterable, *, engine: str, device_name: str, model: str, threads: int | None = None
) -> Calibration | None:
    """Append the run's clean batches (status ok, some steps) and refit; returns the new
    calibration, or None while there are too few observations to fit. `threads`: the CPU
    threads the run used; batches run on other thread counts are scaled to it, and the count
    is kept with the fit, as the grid calibration does."""
    obs = [
        {"rows": len(b.rows), "prompt_width": b.prompt_width, "steps": b.steps,
         "seconds": b.finished_s - b.started_s, **({"threads": threads} if threads else {})}
        for b in batches
        if b.status == "ok" and b.steps > 0 and b.finished_s > b.started_s
    ]
    path = observations_path(engine, device_name, model)
    history = [_at_threads(o, threads) for o in _append(path, obs, "rows")[-KEEP_BATCHES:]]
    if len(history) < MIN_BATCHES or len({o["rows"] for o in history}) < MIN_BATCH_SIZES:
        return None
    coef, mape = fit([features(o["rows"], o["prompt_width"], o["steps"]) for o in history],
                     [o["seconds"] for o in history])
    return _save(path, Calibration(
        device_name=device_name, engine=engine, model=model,
        prefill=(coef[0], coef[1], coef[2]), decode=(coef[3], coef[4], coef[5]),
        measured_at=_now(), samples=len(history),
        fit_error={"batch_mape": mape, "source": "runs", "batches": len(history),
                   **({"threads": threads} if threads else {})},
    ))


def record_steps(
    steps: Sequence[StepRecord], *, engine: str, device_name: str, model: str,
    threads: int | None = None, instances: int = 1, source: str = "runs",
) -> Calibration | None:
    """Append a run's engine steps (thinned to STEPS_PER_RUN) and refit the step-time model on
    the newest KEEP_STEPS, at the speed this run's steps ran (at_speed_of); None while there
    are too few steps, or too few with prompt tokens, to fit it.
    `instances`: the engine instances that ran side by side (they slow each other), kept with
    each step; their steps are fitted only with steps of as many instances."""
    every = max(1, -(-len(steps) // STEPS_PER_RUN))
    ran = ({"threads": threads} if threads else {}) | ({"instances": instances} if instances > 1 else {})
    obs = [asdict(st) | ran for st in steps[::every] if st.seconds > 0]
    path = observations_path(engine, device_name, model, "steps")
    seen = [o for o in _append(path, obs, "decode_rows") if o.get("instances", 1) == instances]
    seen = seen[-KEEP_STEPS:]
    same = [o for o in seen if o.get("threads") == threads]  # steps are plenty: fit like on like
    cal = fit_steps(same, engine=engine, device_name=device_name, model=model, source=source)
    if cal is None:
        cal = fit_steps([_at_threads(o, threads) for o in seen], engine=engine,
                        device_name=device_name, model=model, source=source)
    if cal is None:
        return None
    cal = replace(cal, fit_error={**cal.fit_error, **ran})
    return _save(path, at_speed_of(cal, obs))


def at_speed_of(cal: Calibration, steps: Sequence[dict]) -> Calibration:
    """`cal` with every time scaled so that it gives `steps` (the run just recorded) the time
    they took: the fit over several runs keeps the model's shape, the newest run tells how
    fast the machine runs now. On a shared 2-core machine the same job's speed moved by 15-20%
    within an hour and stayed there; a fit over the last runs then replayed runs 12-21%
    faster than they ran (bench/README.md, 2026-12-08). Unchanged with fewer than SPEED_STEPS."""
    if len(steps) < SPEED_STEPS:
        return cal
    modelled = sum(cal.step_s(st["prefill_tokens"], st["prefill_attention"], st["decode_rows"],
                              st["decode_context"]) for st in steps)
    measured = sum(st["seconds"] + st.get("gap_s", 0.0) for st in steps)
    if modelled <= 0 or measured <= 0:
        return cal
    speed = measured / modelled
    return cal.scaled(speed, last_run_over_fit=round(speed, 4))


def record_startup(seconds: float, *, engine: str, device_name: str, model: str) -> None:
    """Append how long one instance took from the start of planning until it was loaded
    (planning, vLLM's import, weights, engine start, KV allocation): the next plan's start-up
    forecast (measured_startup_s), which counts from the start of planning too."""
    if seconds > 0:
        _append(observations_path(engine, device_name, model, "startup"),
                [{"instances": 1, "seconds": round(seconds, 3)}], "instances")


def measured_startup_s(*, engine: str, device_name: str, model: str) -> float | None:
    """The median of the last STARTUPS_KEPT start-ups recorded for this engine, device and
    model; None before the first."""
    path = observations_path(engine, device_name, model, "startup")
    if not path.exists():
        return None
    seen = sorted(o["seconds"] for o in _read(path, "instances")[-STARTUPS_KEPT:])
    return seen[len(seen) // 2] if seen else None


def fit_steps(steps: Sequence, *, engine: str, device_name: str, model: str,
              source: str) -> Calibration | None:
    """The step-time model fitted on steps (StepRecords, or their dicts); None when they
    cannot tell its terms apart."""
    rows = [st if isinstance(st, dict) else asdict(st) for st in steps]
    if (len(rows) < MIN_STEPS or sum(r["prefill_tokens"] > 0 for r in rows) < MIN_PREFILL_STEPS
            or len({r["decode_rows"] for r in rows}) < MIN_BATCH_SIZES):
        return None
    # In seconds, not relative: a job's length is its steps' sum, and a few long prefill steps
    # weigh in it as much as hundreds of short decode steps.
    coef, mape = fit([(1.0, r["decode_rows"], r["decode_context"], r["prefill_tokens"],
                       r["prefill_attention"]) for r in rows], [r["seconds"] for r in rows],
                     relative=False)
    d0, d1, d2, p1, p2 = coef
    # The host's time between steps (rows written, the engine fed, plans revised) is paid per
    # step as surely as the forward: its mean joins the step's constant. Not fitted with the
    # terms: it does not grow with what a step holds, and a re-plan's pause is one step's.
    host_s = sum(r.get("gap_s", 0.0) for r in rows) / len(rows)
    return Calibration(device_name=device_name, engine=engine, model=model,
                       prefill=(d0 + host_s, p1, p2), decode=(d0 + host_s, d1, d2),
                       measured_at=_now(), samples=len(rows),
                       fit_error={"step_mape": mape, "source": source, "steps": len(rows),
                                  "host_s_per_step": round(host_s, 6)})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _append(path: Path, obs: list[dict], size_key: str) -> list[dict]:
    """Append observations to a JSONL file; returns every readable one in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for o in obs:
            f.write(json.dumps(o) + "\n")
    return _read(path, size_key)


def _save(path: Path, cal: Calibration) -> Calibration:
    """Beside the observations, one fit per CPU thread count (load_calibrations prefers the
    one of the run's threads) and per count of instances side by side."""
    kind = path.name.rsplit("--", 1)[-1]
    ran = (f"-t{cal.threads}" if cal.threads else "") + (f"x{cal.instances}" if cal.instances > 1 else "")
    atomic_write_json(path.with_name(path.name.replace(f"--{kind}", f"--runs{ran}.json")), asdict(cal))
    return cal


def _at_threads(o: dict, threads: int | None) -> dict:
    """An observation as if run on `threads` CPU threads: its seconds scaled linearly by the
    threads it ran on (when both are known), so runs on other thread counts (a busy machine
    takes fewer) inform the fit instead of blurring it. Every observation counts: a fit on
    only the few batches of one thread count extrapolated badly (+592% on the 200-row job)."""
    ran = o.get("threads")
    if not threads or not ran or ran == threads:
        return o
    return o | {"seconds": o["seconds"] * ran / threads}


def _read(path: Path, size_key: str = "rows") -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            o = json.loads(line)
            if o[size_key] >= 0 and o["seconds"] > 0:
                out.append(o)
        except (ValueError, KeyError, TypeError):
            continue  # a torn line from a killed run
    return out
