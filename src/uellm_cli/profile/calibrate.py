"""Measure a model's prefill and decode-step times on the local device and fit the cost model.

The forms (see profile/calibration.py), in seconds:
  prefill_s(b, L)  = p0 + p1 * b * L + p2 * b * L * L
  decode_s(b, ctx) = d0 + d1 * b + d2 * b * ctx
Prefill is timed on b x L random tokens (only grid points with b * L <= max_prefill_tokens, so
the default model calibrates within about a minute on a small CPU). A decode step is timed on
one token per row after a KV cache of `ctx` tokens, filled with random K/V (no prefill needed:
the step's time depends on the cache's size, not its values). Coefficients are fitted by
non-negative least squares on relative error (each equation divided by its measured time),
so small and large points count alike; the fit error is reported as MAPE.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import asdict
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

from uellm_cli.errors import ConfigError
from uellm_cli.paths import home_dir
from uellm_cli.profile.calibration import Calibration

# up to the scheduler's default batch cap (64), so the fit is not stretched past what it saw
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_CONTEXTS = (32, 128, 512)
DEFAULT_REPEATS = 2
DEFAULT_MAX_PREFILL_TOKENS = 512


def calibrate(
    model_dir: str,
    *,
    device: str = "cpu",
    engine: str = "hf",
    batch_sizes=DEFAULT_BATCH_SIZES,
    contexts=DEFAULT_CONTEXTS,
    repeats: int = DEFAULT_REPEATS,
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
    dtype: str | None = None,
    name: str | None = None,
    progress=None,
) -> Calibration:
    """Time prefill and decode over the grid and fit the cost model for this device and model.

    name: the model name stored in the result (ModelProfile.name; default: the folder's name).
    progress: optional callable(done, total) for a progress bar in the command.
    """
    if engine == "vllm":  # the same forms, measured through vLLM (engine/vllm_calibrate.py)
        from uellm_cli.engine.vllm_calibrate import calibrate_vllm

        return calibrate_vllm(model_dir, device=device, batch_sizes=batch_sizes, contexts=contexts,
                              repeats=repeats, max_prefill_tokens=max_prefill_tokens, dtype=dtype,
                              name=name, progress=progress)
    if engine != "hf":
        raise ConfigError(f"calibration runs the hf or vllm engine, not {engine!r}")
    if repeats < 1 or not batch_sizes or not contexts:
        raise ConfigError("calibration needs repeats >= 1 and at least one batch size and context")
    import torch

    from uellm_cli.engine.models import choose_cpu_threads

    if device == "cpu":  # the same thread choice as `uellm run`, so the numbers transfer
        torch.set_num_threads(choose_cpu_threads())
    model = _load(model_dir, device, dtype)
    cfg = model.config
    prefill_grid = [(b, L) for L in contexts for b in batch_sizes if b * L <= max_prefill_tokens]
    if not prefill_grid:  # always measure something: the smallest point
        prefill_grid = [(min(batch_sizes), min(contexts))]
    decode_grid = [(b, c) for c in contexts for b in batch_sizes]
    total, done = len(prefill_grid) + len(decode_grid), 0
    gen = torch.Generator().manual_seed(0)
    vocab = int(cfg.vocab_size)
    prefill_pts, decode_pts = [], []
    with torch.inference_mode():
        _prefill(model, torch.randint(0, vocab, (1, 8), generator=gen).to(device), device)  # warm-up
        for b, L in prefill_grid:
            ids = torch.randint(0, vocab, (b, L), generator=gen).to(device)
            t = statistics.median(_prefill(model, ids, device) for _ in range(repeats))
            prefill_pts.append((b, L, t))
            done += 1
            if progress:
                progress(done, total)
        for b, ctx in decode_grid:
            t = _decode(model, b, ctx, repeats, gen, device)
            decode_pts.append((b, ctx, t))
            done += 1
            if progress:
                progress(done, total)
    p, p_err, d, d_err = fit_grid(prefill_pts, decode_pts)
    return Calibration(
        device_name=device_name(device), engine=engine, model=name or Path(model_dir).name,
        prefill=tuple(p), decode=tuple(d), measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        samples=len(prefill_pts) + len(decode_pts),
        fit_error={"prefill_mape": p_err, "decode_mape": d_err, "dtype": str(model.dtype).removeprefix("torch."),
                   "repeats": repeats, "threads": torch.get_num_threads()},
    )


def _load(model_dir: str, device: str, dtype: str | None):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from uellm_cli.profile.model import normalize_dtype

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"cannot calibrate on device {device!r}", hint="use cpu or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"cannot calibrate on {device}: torch sees no CUDA device")
    # The engine's defaults: float32 on the CPU, the checkpoint's dtype on a GPU.
    chosen = getattr(torch, normalize_dtype(dtype)) if dtype else (torch.float32 if device == "cpu" else "auto")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=chosen)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load {model_dir} for calibration: {str(exc).splitlines()[0]}") from exc
    return model.to(device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def _forward(model, ids, cache, **extra):
    """model forward with a cache, whichever name this transformers version gives the argument."""
    import inspect

    params = inspect.signature(model.forward).parameters
    key = "cache" if "cache" in params else "past_key_values"
    if "logits_to_keep" in params:
        extra["logits_to_keep"] = 1  # generate() computes only the last position's logits
    return model(input_ids=ids, use_cache=True, **{key: cache}, **extra)


def _prefill(model, ids, device: str) -> float:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    _sync(device)
    t = time.perf_counter()
    _forward(model, ids, cache)
    _sync(device)
    return time.perf_counter() - t


def _decode(model, batch: int, ctx: int, repeats: int, gen, device: str) -> float:
    """Median time of one-token steps after a random KV cache of `ctx` tokens per row."""
    import torch
    from transformers import DynamicCache

    from uellm_cli.profile.model import _kv_heads

    cfg = model.config
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    kv = _kv_heads(cfg, heads)
    cache = DynamicCache(config=cfg)
    for layer in range(int(cfg.num_hidden_layers)):
        k = torch.randn(batch, kv, ctx, head_dim, generator=gen, dtype=torch.float32).to(device, model.dtype)
        cache.update(k, k.clone(), layer)
    ids = torch.randint(0, int(cfg.vocab_size), (batch, 1), generator=gen).to(device)
    _forward(model, ids, cache)  # warm-up at this shape
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        _forward(model, ids, cache)
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def fit_grid(prefill_pts, decode_pts) -> tuple[list[float], float, list[float], float]:
    """Fit Calibration.prefill on (batch, prompt, seconds) points and Calibration.decode on
    (batch, context, seconds) points; returns both coefficient lists and their MAPEs."""
    p, p_err = fit([(1.0, b * n, b * n * n) for b, n, _ in prefill_pts], [t for *_, t in prefill_pts])
    d, d_err = fit([(1.0, b, b * c) for b, c, _ in decode_pts], [t for *_, t in decode_pts])
    return p, p_err, d, d_err


def fit(rows: list[tuple[float, ...]], times: list[float]) -> tuple[list[float], float]:
    """Non-negative least squares of `times` on `rows`, minimising relative error; returns the
    coefficients and the MAPE of the fit on the same points."""
    import numpy as np

    a = np.asarray(rows, dtype=float)
    y = np.asarray(times, dtype=float)
    w = 1.0 / np.maximum(y, 1e-12)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(cal), indent=2))
    tmp.replace(path)
    return path


def calibration_from_dict(d: dict) -> Calibration:
    return Calibration(
        device_name=d["device_name"], engine=d["engine"], model=d["model"],
        prefill=tuple(float(x) for x in d["prefill"]), decode=tuple(float(x) for x in d["decode"]),
        measured_at=d.get("measured_at", ""), samples=int(d.get("samples", 0)),
        fit_error=dict(d.get("fit_error") or {}),
    )


def load_calibrations(engine: str = "hf", model: str | None = None) -> dict[str, Calibration]:
    """Stored calibrations keyed by device name (the newest per device; only `model`'s if given).
    Unreadable files are skipped: a calibration is an optimisation, never a requirement."""
    out: dict[str, Calibration] = {}
    folder = calibrations_dir() / _slug(engine)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            cal = calibration_from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if cal.engine != engine or (model is not None and cal.model != model):
            continue
        old = out.get(cal.device_name)
        if old is None or cal.measured_at > old.measured_at:
            out[cal.device_name] = cal
    return out
