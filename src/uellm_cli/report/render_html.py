"""report.html: one self-contained page (inline CSS and SVG, no script, no network)."""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from uellm_cli.jobs.durable import atomic_write_bytes
from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.report import plots
from uellm_cli.report.formats import (
    fmt_bytes,
    fmt_expected_slo,
    fmt_pct,
    fmt_rate,
    fmt_s,
    fmt_signed_pct,
)
from uellm_cli.report.metrics import RunMetrics, forecast_makespan, row_latency, row_slo_met
from uellm_cli.report.render import REPORT_HTML

LIST_LIMIT = 20  # rows shown in the "slowest" and "failed" tables

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2430}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:20px 0 8px} h3{font-size:14px;margin:14px 0 4px}
.sub{color:#5b6472;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(185px,1fr));gap:10px;margin-top:16px}
.card{background:#fff;border-radius:8px;padding:10px 14px;box-shadow:0 1px 2px #0001}
.card .k{font-size:12px;color:#5b6472} .card .v{font-size:18px;font-weight:600;margin-top:2px;white-space:nowrap}
.card .d{font-size:12px;color:#5b6472}
.good{color:#1a7f37} .warn{color:#9a6700} .bad{color:#cf222e}
section{background:#fff;border-radius:8px;padding:4px 16px 14px;margin-top:14px;box-shadow:0 1px 2px #0001}
svg{width:100%;height:auto;display:block}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:3px 10px;border-bottom:1px solid #e4e7eb;text-align:right}
th:first-child,td:first-child{text-align:left}
.note{color:#5b6472;font-style:italic;font-size:13px}
pre{font-size:12px;background:#f5f6f8;padding:8px;overflow:auto;max-height:400px}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _card(label: str, value: str, detail: str = "", cls: str = "") -> str:
    d = f'<div class="d">{_e(detail)}</div>' if detail else ""
    return f'<div class="card"><div class="k">{_e(label)}</div><div class="v {cls}">{_e(value)}</div>{d}</div>'


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chart(svg: str | None, empty: str) -> str:
    return svg if svg else f'<p class="note">{_e(empty)}</p>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _cards(m: RunMetrics) -> str:
    att = m.slo_attainment
    att_cls = "" if att is None else "good" if att >= 1 else "warn" if att >= 0.9 else "bad"
    fc = forecast_makespan(m.forecast)
    cards = [
        _card("rows ok", f"{m.ok} / {m.rows}", f"{m.rejected} rejected, {m.errors} failed",
              "bad" if m.errors or m.rejected else "good"),
        _card("SLO attainment", fmt_pct(att),
              f"{m.slo_met}/{m.rows_with_deadline} rows with a deadline" if m.rows_with_deadline
              else "no row has a deadline", att_cls),
        _card("makespan", fmt_s(m.makespan_s), f"forecast {fmt_s(fc)}" if fc is not None else ""),
        _card("throughput", fmt_rate(m.throughput_tok_s), f"{m.generated_tokens:,} tokens generated"),
        _card("goodput", fmt_rate(m.goodput_tok_s), "tokens of rows within their SLO"),
        _card("latency mean", fmt_s(m.latency.mean_s), f"p50 {fmt_s(m.latency.p50_s)}"),
        _card("latency p99", fmt_s(m.latency.p99_s), f"max {fmt_s(m.latency.max_s)}"),
        _card("padding waste", fmt_pct(m.padding_waste), f"{m.batches} batches"),
    ]
    if m.engine is not None:
        cards.append(_card("engine", m.engine, m.engine_note or ""))
    if m.model_load_s is not None:
        cards.append(_card("model load", fmt_s(m.model_load_s)))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _forecast(m: RunMetrics) -> str:
    if not m.forecast:
        return '<p class="note">No forecast was recorded for this run.</p>'
    f = m.forecast
    expected = f.get("expected_makespan_s") is not None
    drawn = fmt_expected_slo(f)
    rows = [
        ("makespan" + (" (rows at their mean predicted lengths)" if expected else ""),
         fmt_s(forecast_makespan(f)), fmt_s(m.makespan_s), fmt_signed_pct(m.makespan_forecast_error)),
        ("SLO attainment" + (" (rows at their likely lengths)" if drawn else ""),
         fmt_pct(f.get("slo_attainment")), fmt_pct(m.slo_attainment), ""),
        *([("SLO attainment, expected over draws of the rows' lengths", drawn,
            fmt_pct(m.slo_attainment), "")] if drawn else []),
        ("throughput", fmt_rate(f.get("throughput_tok_s")), fmt_rate(m.throughput_tok_s), ""),
        ("padding waste", fmt_pct(f.get("padding_waste")), fmt_pct(m.padding_waste), ""),
    ]
    replay = f.get("replay") or {}
    if replay:
        rows.append(("makespan, replayed with the true output lengths", fmt_s(replay.get("makespan_s")),
                     fmt_s(m.makespan_s), fmt_signed_pct(replay.get("makespan_error"))))
        own = replay.get("own_steps") or {}
        if own:
            rows.append(("the same, on a step model fitted to this run's steps", fmt_s(own.get("makespan_s")),
                         fmt_s(m.makespan_s), fmt_signed_pct(own.get("makespan_error"))))
    mae = ""
    if m.batch_finish_forecast_mae_s is not None:
        mae = f'<p class="sub">Mean absolute error of batch finish times: {_e(fmt_s(m.batch_finish_forecast_mae_s))}.</p>'
    if replay.get("row_finish_error_median") is not None:
        mae += (f'<p class="sub">Replayed with the true output lengths (the step-time model and the '
                f'scheduler rules alone): median error of a row\'s finish time '
                f'{_e(fmt_pct(replay["row_finish_error_median"]))} of its time since the first start.</p>')
    return _table(["", "forecast", "actual", "error (forecast − actual) / actual"], rows) + mae


def _predictor(m: RunMetrics, results: Sequence[RowResult]) -> str:
    p = m.predictor
    if not p.count:
        return '<p class="note">No ok row has both a predicted and an actual output length.</p>'
    tau = "n/a" if p.kendall_tau is None else f"{p.kendall_tau:.3f}"
    table = _table(["rows", "MAE (tokens)", "bucket accuracy", "Kendall τ-b"],
                   [(p.count, f"{p.mae_tokens:.1f}", fmt_pct(p.bucket_accuracy), tau)])
    return table + _chart(plots.predicted_vs_actual(results), "")


def _replicas(m: RunMetrics) -> str:
    if not m.replicas:
        return '<p class="note">No batch ran.</p>'
    rows = [(r.replica, r.rows, r.ok, r.batches, fmt_pct(r.slo_attainment), fmt_s(r.makespan_s), fmt_s(r.busy_s),
             fmt_rate(r.throughput_tok_s), fmt_pct(r.padding_waste), fmt_s(r.latency.p99_s)) for r in m.replicas]
    return _table(["replica", "rows", "ok", "batches", "SLO att.", "makespan", "busy", "throughput",
                   "padding", "p99 latency"], rows)


def _utilisation(m: RunMetrics, samples: Sequence[dict]) -> str:
    u = m.utilisation
    if not u:
        return '<p class="note">No utilisation samples were taken.</p>'
    rows = [("process", "CPU", f"{u['cpu_mean_pct']:.0f}%" if u["cpu_mean_pct"] is not None else "n/a",
             "", fmt_bytes(u["rss_peak_bytes"]))]
    for g in u["gpus"]:
        rows.append((f"GPU {g['index']}", "util", "n/a" if g["util_mean_pct"] is None else f"{g['util_mean_pct']:.0f}%",
                     "n/a" if g["util_peak_pct"] is None else f"{g['util_peak_pct']:.0f}%",
                     fmt_bytes(g["mem_peak_bytes"])))
    return (_table(["device", "", "mean", "peak", "peak memory"], rows)
            + f'<p class="sub">{u["samples"]} samples.</p>' + _chart(plots.utilisation(samples), ""))


def _row_lists(results: Sequence[RowResult]) -> str:
    ok = [r for r in results if r.status == "ok" and row_latency(r) is not None]
    slow = sorted(ok, key=lambda r: -row_latency(r))[:LIST_LIMIT]
    parts = []
    if slow:
        parts.append(f"<h3>Slowest rows (top {len(slow)})</h3>")
        parts.append(_table(["id", "latency", "deadline", "met", "output tokens", "replica", "batch"], [
            (r.id, fmt_s(row_latency(r)), fmt_s(r.deadline_s),
             {True: "yes", False: "no", None: "—"}[row_slo_met(r)], r.output_tokens, r.replica, r.batch)
            for r in slow]))
    bad = [r for r in results if r.status != "ok"]
    if bad:
        parts.append(f"<h3>Failed or rejected rows ({len(bad)}; first {min(len(bad), LIST_LIMIT)} shown)</h3>")
        parts.append(_table(["id", "status", "code", "message"], [
            (r.id, r.status, r.error_code or "", (r.error_message or "")[:200]) for r in bad[:LIST_LIMIT]]))
    return "".join(parts) or '<p class="note">No rows.</p>'


def _json_block(title: str, obj, limit: int = 50_000) -> str:
    text = json.dumps(obj, indent=1, default=str)
    if len(text) > limit:
        text = text[:limit] + "\n… (truncated; the full value is in report.json)"
    return f"<details><summary>{_e(title)}</summary><pre>{_e(text)}</pre></details>"


def render_html(
    metrics: RunMetrics,
    *,
    results: Sequence[RowResult] = (),
    batches: Sequence[BatchRecord] = (),
    utilisation: Sequence[dict] | None = None,
    plan_dict: dict | None = None,
    options: Mapping | None = None,
    versions: Mapping | None = None,
    title: str | None = None,
) -> str:
    m = metrics
    opts = dict(options or {})
    title = title or "uellm run"
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    sub = " · ".join(str(x) for x in (opts.get("model"), opts.get("policy"), f"rendered {stamp}") if x)
    missing_deadline = sum(1 for r in results if r.status != "ok" and r.deadline_s is not None)
    if any(r.deadline_s is not None for r in results):
        lat_note = "Points above the dashed line missed their deadline. Rows without a deadline are not drawn."
    else:
        lat_note = "No row has a deadline: latency is drawn against input order."
    if missing_deadline:
        lat_note += f" {missing_deadline} failed or rejected rows with a deadline count as misses but have no latency."
    body = [
        f"<h1>{_e(title)}</h1><div class='sub'>{_e(sub)}</div>",
        f'<div id="summary">{_cards(m)}</div>',
        _section("forecast", "Forecast against actual", _forecast(m)),
        _section("timeline", "Timeline of batches per replica",
                 _chart(plots.gantt(batches, m.model_load_s), "No batch ran.")
                 + '<p class="sub">Blue: measured batches (red: failed). Grey: the plan\'s forecast.</p>'),
        _section("latency", "Latency against deadline",
                 _chart(plots.latency_vs_deadline(results), "No row finished.")
                 + f'<p class="sub">{_e(lat_note)}</p>'),
        _section("latency-cdf", "Latency distribution",
                 _table(["ok rows", "mean", "p50", "p90", "p99", "max"],
                        [(m.latency.count, fmt_s(m.latency.mean_s), fmt_s(m.latency.p50_s), fmt_s(m.latency.p90_s),
                          fmt_s(m.latency.p99_s), fmt_s(m.latency.max_s))])
                 + _chart(plots.latency_cdf(results), "No row finished.")),
        _section("predictor", "Predicted against actual output tokens", _predictor(m, results)),
        _section("replicas", "Per replica", _replicas(m)),
        _section("utilisation", "Utilisation", _utilisation(m, utilisation or [])),
        _section("rows", "Rows", _row_lists(results)),
        _section("run", "Run", _json_block("options", opts) + _json_block("versions", dict(versions or {}))
                 + (_json_block("plan", plan_dict) if plan_dict else "")),
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
        + "\n".join(body) + "</main></body></html>\n"
    )


def write_report_html(out_dir: Path, metrics: RunMetrics, **kwargs) -> Path:
    """Write out_dir/report.html (atomically); kwargs as render_html."""
    return atomic_write_bytes(Path(out_dir) / REPORT_HTML, render_html(metrics, **kwargs).encode("utf-8"))
