"""Turn RunMetrics into what people and programs read: a short rich summary and report.json.

The HTML page lives in render_html.py, its charts in plots.py, number formats in formats.py. Nothing here computes a metric
(report/metrics.py does) or prints: callers show the returned renderable on their console.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from uellm_cli.jobs.durable import atomic_write_bytes
from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.report.formats import fmt_expected_slo, fmt_pct, fmt_rate, fmt_s, fmt_signed_pct
from uellm_cli.report.metrics import RunMetrics, forecast_makespan

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"  # written by render_html.py
REPORT_SCHEMA = 1


# ---------------------------------------------------------------------------- terminal


def summary_lines(m: RunMetrics) -> list[tuple[str, str]]:
    """(label, value) pairs of the numbers a person reads first; shared by terminal and HTML."""
    lines = [
        ("rows", f"{m.ok} ok, {m.rejected} rejected, {m.errors} failed (of {m.rows})"),
        ("SLO attainment", fmt_pct(m.slo_attainment)
         + (f" ({m.slo_met}/{m.rows_with_deadline} rows with a deadline)" if m.rows_with_deadline else
            " (no row has a deadline)")),
        ("makespan", fmt_s(m.makespan_s)),
        ("throughput", fmt_rate(m.throughput_tok_s)),
        ("latency", f"mean {fmt_s(m.latency.mean_s)}, p99 {fmt_s(m.latency.p99_s)}"),
    ]
    if m.engine is not None:
        lines.append(("engine", m.engine + (f" ({m.engine_note})" if m.engine_note else "")))
    if m.model_load_s is not None:
        lines.append(("model load", fmt_s(m.model_load_s)))
    fc = forecast_makespan(m.forecast)
    if fc is not None:
        lines.append(("forecast makespan",
                      f"{fmt_s(fc)} (actual {fmt_s(m.makespan_s)}, error {fmt_signed_pct(m.makespan_forecast_error)})"))
    slo = fmt_expected_slo(m.forecast)
    if slo is not None:
        lines.append(("forecast SLO att.", f"{slo}; actual {fmt_pct(m.slo_attainment)}"))
    return lines


def terminal_summary(metrics: RunMetrics, *, out_dir: Path | None) -> Group:
    """A short table for the console, ending with the path of report.html."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in summary_lines(metrics):
        style = ""
        if label == "SLO attainment" and metrics.slo_attainment is not None:
            style = "green" if metrics.slo_attainment >= 1.0 else "yellow" if metrics.slo_attainment >= 0.9 else "red"
        if label == "rows" and (metrics.errors or metrics.rejected):
            style = "yellow"
        grid.add_row(label, Text(value, style=style))
    parts: list = [grid]
    if out_dir is not None:
        parts.append(Text(f"report: {Path(out_dir) / REPORT_HTML}", style="dim"))
    return Group(*parts)


# ---------------------------------------------------------------------------- report.json


def _clean(obj):
    """JSON-safe: NaN/inf become null, tuples lists, unknown objects their str()."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_clean(v) for v in obj]
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    if hasattr(obj, "__dataclass_fields__"):
        return _clean(asdict(obj))
    return str(obj)


def report_document(
    metrics: RunMetrics,
    *,
    plan_dict: dict | None = None,
    options: Mapping | None = None,
    versions: Mapping | None = None,
    batches: Sequence[BatchRecord] = (),
    utilisation: Sequence[dict] | None = None,
    title: str | None = None,
) -> dict:
    """report.json's content: everything `uellm report` needs besides the results file."""
    return _clean({
        "schema": REPORT_SCHEMA,
        "title": title,
        "metrics": metrics.to_dict(),
        "forecast": metrics.forecast,
        "model_load_s": metrics.model_load_s,
        "plan": plan_dict,
        "options": dict(options or {}),
        "versions": dict(versions or {}),
        "batches": [asdict(b) for b in batches],
        "utilisation": list(utilisation or []),
    })


def write_report_json(
    out_dir: Path,
    metrics: RunMetrics,
    *,
    plan_dict: dict | None = None,
    options: Mapping | None = None,
    versions: Mapping | None = None,
    results: Sequence[RowResult] = (),
    batches: Sequence[BatchRecord] = (),
    utilisation: Sequence[dict] | None = None,
    title: str | None = None,
) -> Path:
    """Write out_dir/report.json atomically. Rows stay in the results file (not duplicated);
    `results` is accepted for symmetry with write_report_html."""
    del results
    doc = report_document(metrics, plan_dict=plan_dict, options=options, versions=versions,
                          batches=batches, utilisation=utilisation, title=title)
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    return atomic_write_bytes(Path(out_dir) / REPORT_JSON, text.encode("utf-8"))
