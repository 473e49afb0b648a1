"""Calibrate the cost model from the batches real runs executed.

A grid calibration (`uellm profile --calibrate`) times bare forward passes; a real batch also
pays for `generate`'s loop, padding and sampling, and runs under whatever else the machine is
doing. Every finished run therefore records its batches (rows, prompt width, steps, seconds)
and refits the same Calibration form on them, so the next forecast is made from what this
engine really did on this device. Stored beside the grid calibration; the newest one wins.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from uellm_cli.jobs.durable import atomic_write_json
from uellm_cli.profile.calibrate import _slug, calibrations_dir, fit
from uellm_cli.profile.calibration import Calibration

KEEP_BATCHES = 2000  # newest observations used for the fit
MIN_BATCHES = 6
MIN_BATCH_SIZES = 2  # distinct batch sizes needed to tell per-row from per-step costs


def observations_path(engine: str, device_name: str, model: str) -> Path:
    return calibrations_dir() / _slug(engine) / f"{_slug(device_name)}--{_slug(model)}--batches.jsonl"


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
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for o in obs:
            f.write(json.dumps(o) + "\n")
    history = [_at_threads(o, threads) for o in _read(path)[-KEEP_BATCHES:]]
    if len(history) < MIN_BATCHES or len({o["rows"] for o in history}) < MIN_BATCH_SIZES:
        return None
    coef, mape = fit([features(o["rows"], o["prompt_width"], o["steps"]) for o in history],
                     [o["seconds"] for o in history])
    cal = Calibration(
        device_name=device_name, engine=engine, model=model,
        prefill=(coef[0], coef[1], coef[2]), decode=(coef[3], coef[4], coef[5]),
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        samples=len(history),
        fit_error={"batch_mape": mape, "source": "runs", "batches": len(history),
                   **({"threads": threads} if threads else {})},
    )
    atomic_write_json(path.with_name(path.name.replace("--batches.jsonl", "--runs.json")), asdict(cal))
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


def _read(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            o = json.loads(line)
            if o["rows"] > 0 and o["seconds"] > 0:
                out.append(o)
        except (ValueError, KeyError, TypeError):
            continue  # a torn line from a killed run
    return out
