"""What one system's run gave back, in one shape for every adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class BenchContext:
    """What every system gets: the same rows, model, thread count and limits."""

    rows: list[dict]  # jobfile.read_job rows + "prompt_ids"
    job_path: Path  # the prepared job (what uellm reads)
    model_path: Path
    eos_ids: list[int]
    threads: int
    work_dir: Path
    timeout_s: float
    raw_prompt: bool = False
    uellm_bin: Path | None = None
    uellm_args: tuple[str, ...] = ()
    vllm_python: Path | None = None
    vllm_kv_gib: float = 1.0  # the plain vLLM systems' KV cache (uellm sizes its own)


@dataclass(slots=True)
class SystemRun:
    """One system's result.

    rows: per input row: index, id, status, output_text, output_tokens, finish_reason,
        prompt_tokens, finished_s (seconds on the system's own run clock, which starts when
        its process starts, so model loading counts).
    status: "ok" (ran), "failed" (ran and broke), "skipped" (not run; reason says why).
    """

    name: str
    status: str
    reason: str | None = None
    rows: list[dict] = field(default_factory=list)
    load_s: float | None = None
    padding_waste: float | None = None
    peak_rss_mb: float | None = None
    wall_s: float | None = None
    load_avg_before: float | None = None
    notes: list[str] = field(default_factory=list)
    description: str = ""
    # uellm's own forecast against what ran: makespan_error (the plan's forecast),
    # replay_makespan_error and replay_row_error (replayed with the true output lengths)
    forecast: dict | None = None
