"""Adapter for uellm: `uellm run JOB --policy P --engine E --out DIR -q --no-history` in a
subprocess, then its results.parquet and report.json are read back."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

from systems.launch import launch, thread_env
from systems.outcome import BenchContext, SystemRun
from systems.spec import SystemSpec

OK_EXIT = (0, 3)  # 3 = finished, some rows missed their deadline or were rejected


def uellm_binary(explicit: Path | None = None) -> Path | None:
    """The uellm entry point of the venv running the bench (or an explicit one)."""
    if explicit is not None:
        return explicit if explicit.exists() else None
    cand = Path(sys.executable).with_name("uellm")
    if cand.exists():
        return cand
    found = shutil.which("uellm")
    return Path(found) if found else None


def command(spec: SystemSpec, ctx: BenchContext, out_dir: Path, binary: Path) -> list[str]:
    default_cap = max(r["max_new_tokens"] for r in ctx.rows)
    cmd = [str(binary), "run", str(ctx.job_path), "--model", str(ctx.model_path),
           "--out", str(out_dir), "--policy", spec.mode, "--max-new-tokens", str(default_cap),
           "-q", "--no-history", "--force"]
    if ctx.raw_prompt:
        cmd.append("--raw-prompt")
    cmd += ["--engine", spec.engine]
    if spec.replicas:
        cmd += ["--backend", "ray", "--replicas", str(spec.replicas)]
    return cmd + list(ctx.uellm_args)


def run(spec: SystemSpec, ctx: BenchContext) -> SystemRun:
    binary = uellm_binary(ctx.uellm_bin)
    if spec.engine == "vllm":
        from systems.vllm import vllm_python

        py, why = vllm_python(ctx.vllm_python)
        if py is None:
            return SystemRun(spec.name, "skipped", reason=why)
    if binary is None:
        return SystemRun(spec.name, "skipped", reason="no uellm executable next to this python")
    work = ctx.work_dir / spec.name
    out_dir = work / "out"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    launched = launch(command(spec, ctx, out_dir, binary), log=work / "log.txt",
                      env=thread_env(ctx.threads), timeout_s=ctx.timeout_s)
    result = SystemRun(spec.name, "ok", peak_rss_mb=launched.peak_rss_mb, wall_s=launched.wall_s,
                       description=spec.description)
    results_path = out_dir / "results.parquet"
    if launched.timed_out or launched.returncode not in OK_EXIT or not results_path.exists():
        result.status = "failed"
        what = f"timed out after {ctx.timeout_s:.0f} s" if launched.timed_out else \
            f"exit {launched.returncode}"
        result.reason = f"{what}: {_error_line(launched.log_tail)}"
        return result
    result.rows = read_results(results_path, ctx.rows)
    # start-up, as for the other systems: clock start until the first row starts generating
    # (CLI start, validation, profiling, planning and model load all count)
    starts = [r["started_s"] for r in result.rows if r.get("started_s") is not None]
    result.load_s = min(starts) if starts else None
    report = out_dir / "report.json"
    if report.exists():
        doc = json.loads(report.read_text())
        metrics = doc.get("metrics") or {}
        result.padding_waste = metrics.get("padding_waste")
        weights = doc.get("model_load_s", metrics.get("model_load_s"))
        if weights is not None:
            result.notes.append(f"uellm model_load_s (weights only) {weights:.2f} s")
        fc = metrics.get("forecast") or {}
        replay = fc.get("replay") or {}
        own = replay.get("own_steps") or {}  # replayed on a step model fitted to this run's steps
        result.forecast = {"makespan_error": metrics.get("makespan_forecast_error"),
                           # deadlines met: expected over drawn lengths where the plan has it
                           "slo_attainment": fc.get("expected_slo_attainment", fc.get("slo_attainment")),
                           "replay_makespan_error": replay.get("makespan_error"),
                           "replay_row_error": replay.get("row_finish_error_median"),
                           "own_replay_makespan_error": own.get("makespan_error"),
                           "own_replay_row_error": own.get("row_finish_error_median")}
        if metrics.get("batches") is not None:
            result.notes.append(f"{metrics['batches']} batches")
    return result


def read_results(path: Path, rows: list[dict]) -> list[dict]:
    """results.parquet -> bench rows (matched by id; a missing row is an error)."""
    import pandas as pd

    df = pd.read_parquet(path)
    by_id = {str(rec["id"]): rec for rec in df.to_dict("records")}
    out = []
    for r in rows:
        rec = by_id.get(r["id"])
        if rec is None:
            out.append({"index": r["index"], "id": r["id"], "status": "error",
                        "error": "missing from results.parquet"})
            continue
        out.append({
            "index": r["index"], "id": r["id"], "status": str(rec.get("status")),
            "output_text": _clean(rec.get("output_text")),
            "output_tokens": _int(rec.get("output_tokens")),
            "finish_reason": _clean(rec.get("finish_reason")),
            "prompt_tokens": _int(rec.get("prompt_tokens")),
            "started_s": _float(rec.get("started_s")),
            "finished_s": _float(rec.get("finished_s")),
            "error": _clean(rec.get("error_message")),
        })
    return out


def _clean(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v)


def _int(v):
    v = _float(v)
    return None if v is None else int(v)


def _float(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith("error"):
            return ln[:300]
    return lines[-1][:300] if lines else "(no output)"
