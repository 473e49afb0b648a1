"""Measure a model's prefill and decode-step times on the local device: the engines' half of
calibration (fitting and storage are profile/calibrate.py's).

Prefill is timed on b x L random tokens (grid points with b * L <= max_prefill_tokens), and on
one row of each long prompt length up to the model's context (grid()), so forecasts hold for
long prompts too; the default model calibrates within a few minutes on a small CPU. A decode step is timed on
one token per row after a KV cache of `ctx` tokens, filled with random K/V (no prefill needed:
the step's time depends on the cache's size, not its values). `engine="vllm"` measures the
same forms through vLLM (engine/vllm_calibrate.py).
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from uellm_cli.errors import ConfigError
from uellm_cli.profile.calibrate import device_name, fit_grid, long_prompts
from uellm_cli.profile.calibration import Calibration
from uellm_cli.profile.model import max_context_of

# up to the scheduler's default batch cap (64), so the fit is not stretched past what it saw
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_CONTEXTS = (32, 128, 512)
DEFAULT_REPEATS = 2
DEFAULT_MAX_PREFILL_TOKENS = 512
LONG_DECODE_BATCHES = (1, 4)


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
    threads: int | None = None,
    progress=None,
) -> Calibration:
    """Time prefill and decode over the grid and fit the cost model for this device and model.

    name: the model name stored in the result (ModelProfile.name; default: the folder's name).
    threads: CPU threads to measure with (the command takes the same choice as `uellm run`,
    profile/threads.py; None leaves torch's setting). progress: optional callable(done, total).
    """
    if engine == "vllm":  # the same forms, measured through vLLM
        from uellm_cli.engine.vllm_calibrate import calibrate_vllm

        return calibrate_vllm(model_dir, device=device, batch_sizes=batch_sizes, contexts=contexts,
                              repeats=repeats, max_prefill_tokens=max_prefill_tokens, dtype=dtype,
                              name=name, threads=threads, progress=progress)
    if engine != "hf":
        raise ConfigError(f"calibration runs the hf or vllm engine, not {engine!r}")
    if repeats < 1 or not batch_sizes or not contexts:
        raise ConfigError("calibration needs repeats >= 1 and at least one batch size and context")
    import torch

    if device == "cpu" and threads:
        torch.set_num_threads(threads)
    model = _load(model_dir, device, dtype)
    cfg = model.config
    prefill_grid, decode_grid = grid(batch_sizes, contexts, max_prefill_tokens,
                                     max_context_of(cfg))
    total, done = len(prefill_grid) + len(decode_grid), 0
    gen = torch.Generator().manual_seed(0)
    vocab = int(cfg.vocab_size)
    prefill_pts, decode_pts = [], []
    with torch.inference_mode():
        _prefill(model, torch.randint(0, vocab, (1, 8), generator=gen).to(device), device)  # warm-up
        for b, L in prefill_grid:
            ids = torch.randint(0, vocab, (b, L), generator=gen).to(device)
            runs = repeats if max(contexts) >= L else 1  # a long prompt is slow and steady
            t = statistics.median(_prefill(model, ids, device) for _ in range(runs))
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


def grid(batch_sizes, contexts, max_prefill_tokens: int, max_context: int
         ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(prefill, decode) points to time: the (batch, length) grid, prefills only where
    b * L <= max_prefill_tokens, then long prompts one row at a time up to the model's context
    (long_prompts): the prefill's quadratic attention term is fitted where it dominates rather
    than extrapolated from short prompts, so forecasts hold over the whole context."""
    prefill = [(b, L) for L in contexts for b in batch_sizes if b * L <= max_prefill_tokens]
    if not prefill:  # always measure something: the smallest point
        prefill = [(min(batch_sizes), min(contexts))]
    decode = [(b, c) for c in contexts for b in batch_sizes]
    longs = long_prompts(max(contexts), max_context)
    prefill += [(1, L) for L in longs]
    decode += [(b, L) for L in longs for b in LONG_DECODE_BATCHES]
    return prefill, decode


def _load(model_dir: str, device: str, dtype: str | None):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from uellm_cli.profile.model_profile import normalize_dtype

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

    from uellm_cli.profile.model import kv_heads_of

    cfg = model.config
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    kv = kv_heads_of(cfg, heads)
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
