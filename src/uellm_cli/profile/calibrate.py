"""Fit and store the cost model's calibrations (the measuring is the engines' job:
engine/calibrate.py for hf, engine/vllm_calibrate.py for vLLM), and the long prompt lengths
both measure (long_prompts).

The forms (see profile/calibration.py), in seconds:
  prefill_s(b, L)  = p0 + p1 * b * L + p2 * b * L * L
  decode_s(b, ctx) = d0 + d1 * b + d2 * b * ctx
Coefficients are fitted by non-negative least squares on relative error (each equation
divided by its measured time), so small and large points count alike; the fit error is
reported as MAPE. Calibrations are stored per engine, device and model under UELLM_HOME.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from itertools import combinations
from pathlib import Path

from uellm_cli.jobs.durable import atomic_write_json
from uellm_cli.paths import home_dir
from uellm_cli.profile.calibration import Calibration, same_model

LONG_PROMPTS_FROM = 2048  # prompts from here up to the context are timed alone
LONG_PROMPT_CAP = 16384
LONG_PROMPT_ROOM = 16  # the longest prompt timed leaves this many tokens of the context


def long_prompts(longest_short: int, max_context: int) -> list[int]:
    """Prompt lengths past a calibration grid's contexts, which both engines' calibrations
    time one row at a time so the attention term is fitted where it dominates: doubling from
    LONG_PROMPTS_FROM, and the longest prompt the context takes with a few tokens to generate
    (capped at LONG_PROMPT_CAP: a 128k-token prefill on a CPU would take hours; the fit goes
    on from there)."""
    top = min(max_context, LONG_PROMPT_CAP) - LONG_PROMPT_ROOM
    out, length = [], LONG_PROMPTS_FROM
    while length < top:
        if length > longest_short:
            out.append(length)
        length *= 2
    if top > max(longest_short, *out, 0):
        out.append(top)
    return out


def fit_grid(prefill_pts, decode_pts) -> tuple[list[float], float, list[float], float]:
    """Fit Calibration.prefill on (batch, prompt, seconds) points and Calibration.decode on
    (batch, context, seconds) points; returns both coefficient lists and their MAPEs."""
    p, p_err = fit([(1.0, b * n, b * n * n) for b, n, _ in prefill_pts], [t for *_, t in prefill_pts])
    d, d_err = fit([(1.0, b, b * c) for b, c, _ in decode_pts], [t for *_, t in decode_pts])
    return p, p_err, d, d_err


def fit(rows: list[tuple[float, ...]], times: list[float], *,
        relative: bool = True) -> tuple[list[float], float]:
    """Non-negative least squares of `times` on `rows`, minimising relative error (or, with
    relative=False, seconds: right where the time goes, as a job's length needs); returns the
    coefficients and the MAPE of the fit on the same points."""
    import numpy as np

    a = np.asarray(rows, dtype=float)
    y = np.asarray(times, dtype=float)
    w = 1.0 / np.maximum(y, 1e-12) if relative else np.ones_like(y)
    coef = nnls(a * w[:, None], y * w)
    pred = a @ coef
    mape = float(np.mean(np.abs(pred - y) / np.maximum(y, 1e-12)))
    return [float(c) for c in coef], mape


def nnls(a, y):
    """Exact non-negative least squares for a few unknowns: the best least-squares solution over
    every subset of free coefficients (the others held at 0) whose values are all >= 0.
    With k <= 6 unknowns this is at most 64 small solves (numpy only, no scipy)."""
    import numpy as np

    k = a.shape[1]
    scale = np.maximum(np.abs(a).max(axis=0), 1e-300)  # columns differ by many orders of magnitude
    a_s = a / scale
    best, best_res = np.zeros(k), float(np.sum(y**2))
    for size in range(1, k + 1):
        for subset in combinations(range(k), size):
            sol, *_ = np.linalg.lstsq(a_s[:, subset], y, rcond=None)
            if np.any(sol < 0):
                continue
            res = float(np.sum((a_s[:, subset] @ sol - y) ** 2))
            if res < best_res - 1e-18:
                best, best_res = np.zeros(k), res
                best[list(subset)] = sol
    return best / scale


def device_name(device: str) -> str:
    """The Device.name detection gives this device, so calibrations match cluster devices."""
    if device == "cpu":
        from uellm_cli.profile.cpu_bench import cpu_info

        return cpu_info()["name"]
    from uellm_cli.profile.nvml_detect import detect_gpus

    gpus = detect_gpus()[0]
    index = int(device.split(":")[1]) if ":" in device else 0
    if index < len(gpus):
        return gpus[index].name
    import torch

    return torch.cuda.get_device_name(index)


# ---------------------------------------------------------------------------- storage


def calibrations_dir() -> Path:
    return home_dir() / "profiles" / "calibrations"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def save_calibration(cal: Calibration) -> Path:
    """Write one calibration (one file per engine, device and model); returns its path."""
    path = calibrations_dir() / _slug(cal.engine) / f"{_slug(cal.device_name)}--{_slug(cal.model)}.json"
    return atomic_write_json(path, asdict(cal))


def calibration_from_dict(d: dict) -> Calibration:
    return Calibration(
        device_name=d["device_name"], engine=d["engine"], model=d["model"],
        prefill=tuple(float(x) for x in d["prefill"]), decode=tuple(float(x) for x in d["decode"]),
        measured_at=d.get("measured_at", ""), samples=int(d.get("samples", 0)),
        fit_error=dict(d.get("fit_error") or {}),
    )


def load_calibrations(engine: str = "hf", model: str | None = None,
                      threads: int | None = None, instances: int = 1) -> dict[str, Calibration]:
    """Stored calibrations keyed by device name (only `model`'s if given): per device the one
    measured with `threads` CPU threads when there is one (a CPU's speed does not scale
    simply with its threads), else the newest; only those measured with `instances` engine
    instances running side by side (one unless asked: instances that share a CPU slow each
    other). Unreadable files are skipped: a calibration is an optimisation, never a
    requirement."""
    out: dict[str, Calibration] = {}
    folder = calibrations_dir() / _slug(engine)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            cal = calibration_from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (cal.engine != engine or cal.instances != instances
                or (model is not None and not same_model(cal.model, model))):
            continue
        old = out.get(cal.device_name)
        if old is None or _rank(cal, threads) > _rank(old, threads):
            out[cal.device_name] = cal
    return out


def _rank(cal: Calibration, threads: int | None) -> tuple:
    return (threads is not None and cal.threads == threads, cal.measured_at)
