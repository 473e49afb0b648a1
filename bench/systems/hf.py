"""Adapter for the transformers baselines: writes a task, runs hf_worker.py, reads its rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from systems.launch import launch, thread_env
from systems.outcome import BenchContext, SystemRun
from systems.spec import SystemSpec

WORKER = Path(__file__).with_name("hf_worker.py")


def cb_available() -> str | None:
    """None when transformers has the continuous batching manager; else why not."""
    try:
        from transformers.generation.configuration_utils import (  # noqa: F401
            ContinuousBatchingConfig,
        )
        from transformers.generation.continuous_batching import ContinuousMixin  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not here"
        import transformers

        return (f"transformers {transformers.__version__} has no usable continuous batching "
                f"({type(exc).__name__}: {exc})")
    return None


def padding_waste(batches: list[dict]) -> float | None:
    """Decode slots spent on padding or finished rows / all decode slots (rows x steps)."""
    slots = sum(b["rows"] * b["steps"] for b in batches)
    if not slots:
        return None
    return 1.0 - sum(b["real_tokens"] for b in batches) / slots


def run(spec: SystemSpec, ctx: BenchContext) -> SystemRun:
    if spec.mode == "cb":
        why = cb_available()
        if why:
            return SystemRun(spec.name, "skipped", reason=why)
    work = ctx.work_dir / spec.name
    work.mkdir(parents=True, exist_ok=True)
    task = {
        "mode": spec.mode, "batch_size": spec.batch_size, "model": str(ctx.model_path),
        "threads": ctx.threads, "eos_ids": ctx.eos_ids,
        "rows": [{k: r[k] for k in ("index", "id", "prompt_ids", "max_new_tokens")}
                 for r in ctx.rows],
    }
    (work / "task.json").write_text(json.dumps(task))
    out = work / "out.json"
    out.unlink(missing_ok=True)
    launched = launch([sys.executable, str(WORKER), str(work / "task.json"), str(out)],
                      log=work / "log.txt", env=thread_env(ctx.threads), timeout_s=ctx.timeout_s)
    result = SystemRun(spec.name, "ok", peak_rss_mb=launched.peak_rss_mb, wall_s=launched.wall_s,
                       description=spec.description)
    if launched.timed_out or launched.returncode != 0 or not out.exists():
        result.status = "failed"
        what = f"timed out after {ctx.timeout_s:.0f} s" if launched.timed_out else \
            f"exit {launched.returncode}"
        result.reason = f"{what}: {_last_line(launched.log_tail)}"
        return result
    doc = json.loads(out.read_text())
    result.rows = doc["rows"]
    result.load_s = doc["load_s"]
    result.notes = doc.get("notes", [])
    if spec.mode in ("naive", "static"):
        result.padding_waste = padding_waste(doc["batches"])
    return result


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"
