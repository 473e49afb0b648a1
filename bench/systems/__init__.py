"""The systems bench/run.py compares: one adapter per kind, one result shape for all."""

from __future__ import annotations

from systems.outcome import BenchContext, SystemRun
from systems.spec import SystemSpec


def run_system(spec: SystemSpec, ctx: BenchContext) -> SystemRun:
    """Run one system in its own process and return its rows (or why it did not run)."""
    if spec.kind == "hf":
        from systems import hf as adapter
    elif spec.kind == "vllm":
        from systems import vllm as adapter
    else:
        from systems import uellm as adapter
    result = adapter.run(spec, ctx)
    result.description = result.description or spec.description
    return result
