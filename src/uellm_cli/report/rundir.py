"""Read a run folder back (results file + report.json) and re-render its report.

Also the one call `uellm run` makes at the end: `write_reports(...)` = metrics already summed,
then report.json + report.html.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from uellm_cli.errors import InputError
from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.report.metrics import RunMetrics, summarize
from uellm_cli.report.render import REPORT_JSON, write_report_json
from uellm_cli.report.render_html import write_report_html

_BATCH_FIELDS = {f.name for f in fields(BatchRecord)}


@dataclass(slots=True)
class RunData:
    """Everything a report is made from."""

    results: list[RowResult]
    batches: list[BatchRecord]
    forecast: dict | None = None
    model_load_s: float | None = None
    engine: str | None = None
    engine_note: str | None = None
    utilisation: list[dict] = field(default_factory=list)
    plan: dict | None = None
    options: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    title: str | None = None


def _records(run_dir: Path) -> list[dict]:
    parquet, jsonl = run_dir / "results.parquet", run_dir / "results.jsonl"
    if parquet.exists():
        import pyarrow.parquet as pq

        return pq.read_table(parquet).to_pylist()
    if jsonl.exists():
        with jsonl.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    raise InputError(f"{run_dir} holds no results.parquet or results.jsonl")


def load_results(run_dir: Path) -> list[RowResult]:
    """RowResults of a run folder, in input order (index from the file, else its position)."""
    return [RowResult.from_record(rec, i) for i, rec in enumerate(_records(Path(run_dir)))]


def load_run(run_dir: Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a run folder")
    path = run_dir / REPORT_JSON
    if not path.exists():
        raise InputError(f"{run_dir} holds no {REPORT_JSON}", hint="was the run finished?")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from e
    return RunData(
        results=load_results(run_dir),
        batches=[BatchRecord(**{k: v for k, v in b.items() if k in _BATCH_FIELDS}) for b in doc.get("batches", [])],
        forecast=doc.get("forecast"),
        model_load_s=doc.get("model_load_s"),
        engine=(doc.get("metrics") or {}).get("engine"),
        engine_note=(doc.get("metrics") or {}).get("engine_note"),
        utilisation=doc.get("utilisation") or [],
        plan=doc.get("plan"),
        options=doc.get("options") or {},
        versions=doc.get("versions") or {},
        title=doc.get("title"),
    )


def write_reports(
    out_dir: Path,
    metrics: RunMetrics,
    *,
    results: Sequence[RowResult],
    batches: Sequence[BatchRecord],
    utilisation: Sequence[dict] | None = None,
    plan_dict: dict | None = None,
    options: Mapping | None = None,
    versions: Mapping | None = None,
    title: str | None = None,
) -> tuple[Path, Path]:
    """report.json and report.html of one run; returns their paths."""
    common = dict(plan_dict=plan_dict, options=options, versions=versions, results=results,
                  batches=batches, utilisation=utilisation, title=title)
    return write_report_json(out_dir, metrics, **common), write_report_html(out_dir, metrics, **common)


def rerender(run_dir: Path) -> tuple[RunMetrics, RunData, Path]:
    """Recompute the metrics of a run folder and rewrite its report.html (report.json stays)."""
    data = load_run(run_dir)
    metrics = summarize(data.results, data.batches, model_load_s=data.model_load_s,
                        engine=data.engine, engine_note=data.engine_note,
                        forecast=data.forecast, utilisation=data.utilisation)
    html_path = write_report_html(Path(run_dir), metrics, results=data.results, batches=data.batches,
                                  utilisation=data.utilisation, plan_dict=data.plan, options=data.options,
                                  versions=data.versions, title=data.title)
    return metrics, data, html_path
