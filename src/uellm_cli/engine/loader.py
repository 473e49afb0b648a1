"""Load a plan's deployment: one engine per replica, the one loader every path uses (one
machine with hf or vLLM, and each Ray actor for its own replica)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from uellm_cli.engine.hf_engine import HFEngine
from uellm_cli.engine.models import ResolvedModel, load_model
from uellm_cli.engine.rows import PreparedRow
from uellm_cli.plan.types import Plan
from uellm_cli.profile.model_profile import ModelProfile


@dataclass(slots=True, frozen=True)
class LoadOptions:
    """How the weights load, whatever the deployment: the run's options and its thread count."""

    dtype: str | None = None
    trust_remote_code: bool = False
    raw_prompt: bool = False
    threads: int | None = None
    max_batch_size: int | None = None  # caps a vLLM instance's running requests


def hf_replica(resolved: ResolvedModel, tokenizer, device_map: Mapping[str, str] | None,
               opts: LoadOptions) -> HFEngine:
    """One model copy placed by its accelerate device_map (a map with every module on the CPU
    is the plain load)."""
    placed = dict(device_map) if device_map and set(device_map.values()) - {"cpu"} else None
    model = load_model(resolved, device_map=placed, dtype=opts.dtype,
                       trust_remote_code=opts.trust_remote_code, threads=opts.threads)
    return HFEngine(tokenizer, model, raw_prompt=opts.raw_prompt)


def load_engines(engine: str, resolved: ResolvedModel, tokenizer, plan: Plan, opts: LoadOptions,
                 *, rows: Mapping[int, PreparedRow], model_profile: ModelProfile) -> dict[int, object]:
    """Engines keyed by the plan's replica index. vLLM may serve several replicas with one
    instance (CPU replicas share it) and notes in plan.notes what it could not follow."""
    if engine == "vllm":
        from uellm_cli.engine.vllm_engine import load_vllm

        return load_vllm(resolved, tokenizer, plan, opts, rows=rows, model_profile=model_profile)
    return {r.index: hf_replica(resolved, tokenizer, r.device_map, opts)
            for r in plan.deployment.replicas}
