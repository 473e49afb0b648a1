"""The report's charts as inline SVG strings, drawn with matplotlib (imported lazily).

Figures are built with matplotlib.figure.Figure (no pyplot, no GUI backend, no global state).
Each function returns None when it has nothing to draw, so the page shows a note instead of an
empty frame. Large point clouds are rasterised inside the SVG to keep the page light.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.report.metrics import row_latency, row_slo_met

RASTERIZE_ABOVE = 2000  # points; beyond this a scatter becomes an embedded PNG inside the SVG
LOG_ABOVE_RATIO = 30  # latency/deadline values spanning more than this use log axes
OK_COLOR, MISS_COLOR, FORECAST_COLOR = "#2f6db5", "#d62728", "#9aa5b1"

_counter = 0


def _figure(height: float = 3.2, rows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, height), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True) if rows > 1 else fig.subplots()
    return fig, axes


def _svg(fig) -> str:
    """SVG markup for inlining: no XML prologue, no RDF metadata, ids unique per chart."""
    import matplotlib

    global _counter
    _counter += 1
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s(width|height)="[\d.]+pt"', "", text, count=2)  # scale with the page
    return _prefix_ids(text, f"c{_counter}-")


def _prefix_ids(svg: str, prefix: str) -> str:
    """Make every id (and each #reference to one) unique on a page holding several charts."""
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{prefix}{m.group(1)})", svg)
    return re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m.group(1)}"', svg)


def gantt(batches: Sequence[BatchRecord], model_load_s: float | None = None) -> str | None:
    """Batches per replica on the run clock; the forecast, when known, as a thin grey bar."""
    if not batches:
        return None
    replicas = sorted({b.replica for b in batches})
    fig, ax = _figure(height=1.2 + 0.6 * len(replicas))
    has_forecast = False
    for lane, rep in enumerate(replicas):
        mine = [b for b in batches if b.replica == rep]
        ax.broken_barh(
            [(b.started_s, max(b.finished_s - b.started_s, 1e-9)) for b in mine],
            (lane - 0.3, 0.45), facecolors=[MISS_COLOR if b.status == "error" else OK_COLOR for b in mine],
            edgecolor="white", linewidth=0.4, label="actual" if lane == 0 else None,
        )
        fc = [b for b in mine if b.forecast_start_s is not None and b.forecast_finish_s is not None]
        if fc:
            has_forecast = True
            ax.broken_barh(
                [(b.forecast_start_s, max(b.forecast_finish_s - b.forecast_start_s, 1e-9)) for b in fc],
                (lane + 0.18, 0.14), facecolors=FORECAST_COLOR, label="forecast" if lane == 0 else None,
            )
        if len(batches) <= 40:
            for b in mine:
                ax.text((b.started_s + b.finished_s) / 2, lane - 0.075, str(b.batch), ha="center",
                        va="center", fontsize=7, color="white")
    if model_load_s:
        ax.axvline(model_load_s, color="#555", linestyle=":", linewidth=1, label="model loaded")
    ax.set_yticks(range(len(replicas)), [f"replica {r}" for r in replicas])
    ax.set_ylim(-0.6, len(replicas) - 0.4)
    ax.set_xlabel("run clock (s)")
    ax.set_xlim(left=0)
    ax.invert_yaxis()
    if has_forecast or model_load_s:
        ax.legend(loc="upper right", fontsize=8, frameon=False, ncols=3)
    return _svg(fig)


def latency_vs_deadline(results: Sequence[RowResult]) -> str | None:
    """Finished rows with a deadline: latency against deadline; misses (above y = x) in red."""
    pts = [(r.deadline_s, row_latency(r), row_slo_met(r)) for r in results
           if r.status == "ok" and r.deadline_s is not None and row_latency(r) is not None]
    if not pts:
        return _latency_by_row(results)
    fig, ax = _figure()
    raster = len(pts) > RASTERIZE_ABOVE
    for met, color, label in ((True, OK_COLOR, "met"), (False, MISS_COLOR, "missed")):
        xs = [d for d, _, m in pts if m is met]
        ys = [lat for _, lat, m in pts if m is met]
        if xs:
            ax.scatter(xs, ys, s=10 if len(pts) < 500 else 3, c=color, label=f"{label} ({len(xs)})",
                       alpha=0.8, linewidths=0, rasterized=raster)
    values = [v for d, lat, _ in pts for v in (d, lat)]
    if min(values) > 0 and max(values) / min(values) > LOG_ABOVE_RATIO:
        # deadlines of an hour and latencies of seconds: only log axes show both
        lo, hi = min(values) / 1.5, max(values) * 1.5
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.plot([lo, hi], [lo, hi], color="#888", linestyle="--", linewidth=1, label="latency = deadline")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    else:
        xmax = max(d for d, _, _ in pts) * 1.05 or 1.0
        ymax = max(lat for _, lat, _ in pts) * 1.05 or 1.0
        hi = max(xmax, ymax)
        ax.plot([0, hi], [0, hi], color="#888", linestyle="--", linewidth=1, label="latency = deadline")
        ax.set_xlim(0, xmax)
        ax.set_ylim(0, ymax)
    ax.set_xlabel("deadline (s after run start)")
    ax.set_ylabel("latency (s)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _svg(fig)


def _latency_by_row(results: Sequence[RowResult]) -> str | None:
    """Without deadlines: latency of each ok row against its input position."""
    pts = [(r.index, v) for r in results if r.status == "ok" and (v := row_latency(r)) is not None]
    if not pts:
        return None
    fig, ax = _figure()
    ax.scatter([i for i, _ in pts], [v for _, v in pts], s=10 if len(pts) < 500 else 3, c=OK_COLOR,
               alpha=0.8, linewidths=0, rasterized=len(pts) > RASTERIZE_ABOVE, label="no deadline")
    ax.set_xlabel("row (input order)")
    ax.set_ylabel("latency (s)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _svg(fig)


def latency_cdf(results: Sequence[RowResult]) -> str | None:
    """Share of ok rows finished by each time on the run clock."""
    lats = sorted(v for r in results if r.status == "ok" and (v := row_latency(r)) is not None)
    if not lats:
        return None
    n = len(lats)
    fig, ax = _figure(height=2.8)
    ax.step([0.0, *lats], [0.0, *[(i + 1) / n for i in range(n)]], where="post", color=OK_COLOR)
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("share of ok rows")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    return _svg(fig)


def predicted_vs_actual(results: Sequence[RowResult]) -> str | None:
    """Predicted against actual output tokens of ok rows; the diagonal is a perfect predictor."""
    pts = [(r.output_tokens, r.predicted_output_tokens) for r in results
           if r.status == "ok" and r.output_tokens is not None and r.predicted_output_tokens is not None]
    if not pts:
        return None
    fig, ax = _figure()
    ax.scatter([a for a, _ in pts], [p for _, p in pts], s=10 if len(pts) < 500 else 3, c=OK_COLOR,
               alpha=0.6, linewidths=0, rasterized=len(pts) > RASTERIZE_ABOVE)
    xmax = max(a for a, _ in pts) * 1.05 or 1.0
    ymax = max(p for _, p in pts) * 1.05 or 1.0
    hi = max(xmax, ymax)
    ax.plot([0, hi], [0, hi], color="#888", linestyle="--", linewidth=1, label="predicted = actual")
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_xlabel("actual output tokens")
    ax.set_ylabel("predicted output tokens")
    return _svg(fig)


def utilisation(samples: Sequence[dict]) -> str | None:
    """CPU % and GPU util % (top), RSS and GPU memory in GiB (bottom), over the run clock."""
    if not samples:
        return None
    fig, (top, bottom) = _figure(height=4.2, rows=2)
    t = [s["t_s"] for s in samples]
    gib = 1024 ** 3
    top.plot(t, [s.get("cpu_pct") for s in samples], color="#444", label="process CPU %")
    bottom.plot(t, [(s.get("rss_bytes") or 0) / gib for s in samples], color="#444", label="process RSS")
    gpu_ids = sorted({g["index"] for s in samples for g in s.get("gpus", [])})
    for i in gpu_ids:
        by_t = [(s["t_s"], next((g for g in s.get("gpus", []) if g["index"] == i), {})) for s in samples]
        top.plot([x for x, _ in by_t], [g.get("util_pct") for _, g in by_t], label=f"GPU {i} util %")
        bottom.plot([x for x, _ in by_t], [(g.get("mem_used_bytes") or 0) / gib for _, g in by_t],
                    label=f"GPU {i} memory")
    top.set_ylabel("%")
    top.set_ylim(bottom=0)
    bottom.set_ylabel("GiB")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("run clock (s)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _svg(fig)
