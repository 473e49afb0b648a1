"""Adapter for vLLM: runs bench/vllm_worker.py with the bench's own python (the project's
venv, where `make setup` installs vLLM beside uellm)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from systems.jobfile import deadline_priorities
from systems.launch import launch, thread_env
from systems.outcome import BenchContext, SystemRun
from systems.spec import SystemSpec

BENCH = Path(__file__).resolve().parent.parent
WORKER = BENCH / "vllm_worker.py"


def vllm_python(explicit: Path | None = None) -> tuple[Path | None, str | None]:
    """(a python that imports vLLM, None) or (None, why vLLM cannot run here)."""
    if explicit is not None:
        return (explicit, None) if explicit.exists() else (None, f"{explicit} does not exist")
    if importlib.util.find_spec("vllm") is None:
        return None, ("vLLM is not installed in this venv (`make setup` installs it; "
                      "VLLM_EXTRA=none leaves it out)")
    return Path(sys.executable), None


def model_support(model_path: Path) -> str | None:
    """vLLM's CPU attention kernels take head_dim 32/64/80/96/112/128/256 only."""
    try:
        cfg = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    hidden = cfg.get("hidden_size") or cfg.get("n_embd")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    if head_dim is not None and head_dim % 16 == 0 and head_dim >= 32:
        return None
    return f"vLLM's CPU attention does not support head_dim={head_dim} of this model"


def run(spec: SystemSpec, ctx: BenchContext) -> SystemRun:
    py, why = vllm_python(ctx.vllm_python)
    if py is None:
        return SystemRun(spec.name, "skipped", reason=why, description=spec.description)
    why = model_support(ctx.model_path)
    if why:
        return SystemRun(spec.name, "skipped", reason=why, description=spec.description)
    work = ctx.work_dir / spec.name
    work.mkdir(parents=True, exist_ok=True)
    prio = deadline_priorities(ctx.rows)
    longest = max(len(r["prompt_ids"]) + r["max_new_tokens"] for r in ctx.rows)
    task = {
        "model": str(ctx.model_path), "threads": ctx.threads, "priority": spec.priority,
        "eos_ids": ctx.eos_ids, "max_model_len": -(-longest // 64) * 64,
        "kv_cache_gib": ctx.vllm_kv_gib, "gpu_memory_utilization": 0.3,
        "rows": [{"index": r["index"], "id": r["id"], "prompt_ids": r["prompt_ids"],
                  "max_new_tokens": r["max_new_tokens"], "priority": prio[r["index"]]}
                 for r in ctx.rows],
    }
    (work / "task.json").write_text(json.dumps(task))
    out = work / "out.json"
    out.unlink(missing_ok=True)
    launched = launch([str(py), str(WORKER), str(work / "task.json"), str(out)],
                      log=work / "log.txt", env=thread_env(ctx.threads), timeout_s=ctx.timeout_s)
    result = SystemRun(spec.name, "ok", peak_rss_mb=launched.peak_rss_mb, wall_s=launched.wall_s,
                       description=spec.description)
    if launched.timed_out or launched.returncode != 0 or not out.exists():
        result.status = "failed"
        what = f"timed out after {ctx.timeout_s:.0f} s" if launched.timed_out else \
            f"exit {launched.returncode}"
        lines = [ln for ln in launched.log_tail.splitlines() if ln.strip()]
        result.reason = f"{what}: {lines[-1][:300] if lines else '(no output)'}"
        return result
    doc = json.loads(out.read_text())
    result.rows, result.load_s, result.notes = doc["rows"], doc["load_s"], doc.get("notes", [])
    return result
