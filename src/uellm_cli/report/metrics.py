"""Every metric of design.md "Metrics", defined once, for the plan forecast and the run alike.

Pure functions over engine/results.py types (RowResult, BatchRecord). No I/O, no printing.
Each function returns None when its denominator is empty (no deadlines, no batches, ...), so
callers never see a made-up 0 or 100%. docs/report.md states the exact definitions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from uellm_cli.jobs.results import EARLIER, BatchRecord, RowResult
from uellm_cli.profile import length_features

if TYPE_CHECKING:
    from uellm_cli.plan.types import Plan

# ---------------------------------------------------------------------------- per row


def row_latency(row: RowResult) -> float | None:
    """Latency on the run clock: latency_s, else finished_s (design: latency = finished_s)."""
    return row.latency_s if row.latency_s is not None else row.finished_s


def slo_verdict(status: str | None, finished_s: float | None, deadline_s: float | None) -> bool | None:
    """SLO met = finished_s <= deadline_s. None without a deadline; an error/rejected row with a
    deadline is a miss."""
    if deadline_s is None:
        return None
    if status != "ok" or finished_s is None:
        return False
    return finished_s <= deadline_s


def row_slo_met(row: RowResult) -> bool | None:
    return slo_verdict(row.status, row.finished_s, row.deadline_s)


def slo_attainment(rows: Iterable[RowResult]) -> float | None:
    """Rows meeting their deadline / rows with a deadline (any status); None if no deadlines."""
    verdicts = [v for v in (row_slo_met(r) for r in rows) if v is not None]
    if not verdicts:
        return None
    return sum(verdicts) / len(verdicts)


def generated_tokens(rows: Iterable[RowResult]) -> int:
    """Output tokens of ok rows (up to and including EOS; padding is never counted)."""
    return sum(r.output_tokens or 0 for r in rows if r.status == "ok")


def good_tokens(rows: Iterable[RowResult]) -> int:
    """Output tokens of ok rows that met their deadline or had none (nothing to miss)."""
    return sum(r.output_tokens or 0 for r in rows if r.status == "ok" and row_slo_met(r) is not False)


# ---------------------------------------------------------------------------- per batch


def span(intervals: Iterable[tuple[float, float]]) -> float | None:
    """Earliest start to latest end of (start, end) intervals; None if there are none."""
    pairs = list(intervals)
    if not pairs:
        return None
    return max(e for _, e in pairs) - min(s for s, _ in pairs)


def makespan(batches: Iterable[BatchRecord]) -> float | None:
    """First batch start to last batch end, in seconds (model loading excluded)."""
    return span((b.started_s, b.finished_s) for b in batches)


def _per_second(tokens: int, seconds: float | None) -> float | None:
    if seconds is None or seconds <= 0:
        return None
    return tokens / seconds


def throughput(rows: Sequence[RowResult], batches: Sequence[BatchRecord]) -> float | None:
    """generated_tokens(rows) / makespan(batches), tokens per second."""
    return _per_second(generated_tokens(rows), makespan(batches))


def goodput(rows: Sequence[RowResult], batches: Sequence[BatchRecord]) -> float | None:
    """good_tokens(rows) / makespan(batches), tokens per second."""
    return _per_second(good_tokens(rows), makespan(batches))


def padding_waste(batches: Iterable[BatchRecord]) -> float | None:
    """Token slots not holding real output / all token slots; a batch has rows * steps slots."""
    slots = real = 0
    for b in batches:
        slots += len(b.rows) * b.steps
        real += b.output_tokens
    if slots <= 0:
        return None
    return (slots - real) / slots


def busy_time(batches: Iterable[BatchRecord]) -> float:
    """Seconds spent inside batches (summed; batches on one replica never overlap)."""
    return sum(max(0.0, b.finished_s - b.started_s) for b in batches)


# ---------------------------------------------------------------------------- latency


@dataclass(slots=True)
class LatencyStats:
    """Latency of ok rows in seconds; percentiles by linear interpolation (numpy's default)."""

    count: int
    mean_s: float | None = None
    p50_s: float | None = None
    p90_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None


def latency_stats(rows: Iterable[RowResult]) -> LatencyStats:
    values = [v for r in rows if r.status == "ok" and (v := row_latency(r)) is not None]
    if not values:
        return LatencyStats(count=0)
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return LatencyStats(len(a), float(a.mean()), float(p50), float(p90), float(p99), float(a.max()))


# ---------------------------------------------------------------------------- predictor


def length_bucket(tokens: int) -> int:
    """Power-of-two bucket of the paper: [0,8) -> 0, [8,16) -> 1, [16,32) -> 2, ..."""
    return int(length_features.bucket_of(tokens))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall tau-b (ties corrected); None with under two rows or a constant side.

    The profiler's implementation (profile/length_features.py), so both report the same tau."""
    tau = length_features.kendall_tau_b(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return None if math.isnan(tau) else float(tau)


@dataclass(slots=True)
class PredictorError:
    """Predicted against actual output tokens over ok rows that have both."""

    count: int
    mae_tokens: float | None = None
    bucket_accuracy: float | None = None
    kendall_tau: float | None = None


def predictor_error(rows: Iterable[RowResult]) -> PredictorError:
    pairs = [
        (r.predicted_output_tokens, r.output_tokens)
        for r in rows
        if r.status == "ok" and r.predicted_output_tokens is not None and r.output_tokens is not None
    ]
    if not pairs:
        return PredictorError(count=0)
    pred = np.asarray([p for p, _ in pairs], dtype=float)
    actual = np.asarray([a for _, a in pairs], dtype=float)
    return PredictorError(
        count=len(pairs),
        mae_tokens=float(np.abs(pred - actual).mean()),
        bucket_accuracy=length_features.bucket_accuracy(pred, actual),
        kendall_tau=kendall_tau(pred, actual),
    )


# ---------------------------------------------------------------------------- forecast


def relative_error(forecast: float | None, actual: float | None) -> float | None:
    """(forecast - actual) / actual: +0.1 means the forecast was 10% too high."""
    if forecast is None or actual is None or actual == 0:
        return None
    return (forecast - actual) / actual


def batch_forecast_mae(batches: Iterable[BatchRecord]) -> float | None:
    """Mean |forecast_finish_s - finished_s| over batches that carry a forecast, seconds."""
    errs = [abs(b.forecast_finish_s - b.finished_s) for b in batches if b.forecast_finish_s is not None]
    return sum(errs) / len(errs) if errs else None


def forecast_makespan(forecast: dict | None) -> float | None:
    """The forecast's job time: its expected makespan (continuous batching, rows at their mean
    lengths) when it has one, else its makespan."""
    forecast = forecast or {}
    expected = forecast.get("expected_makespan_s")
    return expected if expected is not None else forecast.get("makespan_s")


# A continuous-batching forecast's deadlines met over draws of the rows' lengths (planner._expected)
EXPECTED_SLO_KEYS = ("expected_slo_attainment", "slo_attainment_range", "slo_draws")


def forecast_summary(plan: Plan, predicted_tokens: dict[int, int] | None = None) -> dict:
    """The forecast dict of a plan/types.Plan, by the same definitions as the measurement.

    predicted_tokens (row index -> predicted output tokens) gives the forecast throughput;
    without it that key is None. SLO attainment is over the plan's per-row forecasts.
    """
    ms = span((b.start_s, b.finish_s) for b in plan.batches)
    verdicts = [f.slo_met for f in plan.forecast.values() if f.slo_met is not None]
    tokens = sum(predicted_tokens.get(i, 0) for b in plan.batches for i in b.rows) if predicted_tokens else None
    slots = sum(len(b.rows) * b.max_new_tokens for b in plan.batches)
    waste = (
        sum(b.padding_waste * len(b.rows) * b.max_new_tokens for b in plan.batches) / slots
        if slots else None
    )
    return {
        "makespan_s": ms,
        "expected_makespan_s": plan.summary.get("expected_makespan_s"),
        "slo_attainment": sum(verdicts) / len(verdicts) if verdicts else None,
        **{k: plan.summary[k] for k in EXPECTED_SLO_KEYS if k in plan.summary},
        "throughput_tok_s": _per_second(tokens, ms) if tokens is not None else None,
        "padding_waste": waste,
        "start_offset_s": plan.start_offset_s,
    }


# ---------------------------------------------------------------------------- utilisation


def utilisation_summary(samples: Sequence[dict]) -> dict | None:
    """Mean/peak of sampler.UtilisationSampler samples: CPU %, RSS, and each GPU's util/memory."""
    if not samples:
        return None
    cpu = [s["cpu_pct"] for s in samples if s.get("cpu_pct") is not None]
    rss = [s["rss_bytes"] for s in samples if s.get("rss_bytes") is not None]
    gpus: dict[int, dict[str, list]] = {}
    for s in samples:
        for g in s.get("gpus", []):
            d = gpus.setdefault(g["index"], {"util": [], "mem": []})
            if g.get("util_pct") is not None:
                d["util"].append(g["util_pct"])
            if g.get("mem_used_bytes") is not None:
                d["mem"].append(g["mem_used_bytes"])
    return {
        "samples": len(samples),
        "cpu_mean_pct": sum(cpu) / len(cpu) if cpu else None,
        "rss_peak_bytes": max(rss) if rss else None,
        "gpus": [
            {
                "index": i,
                "util_mean_pct": sum(d["util"]) / len(d["util"]) if d["util"] else None,
                "util_peak_pct": max(d["util"]) if d["util"] else None,
                "mem_peak_bytes": max(d["mem"]) if d["mem"] else None,
            }
            for i, d in sorted(gpus.items())
        ],
    }


# ---------------------------------------------------------------------------- summary


@dataclass(slots=True)
class ReplicaMetrics:
    replica: int
    rows: int
    ok: int
    batches: int
    slo_attainment: float | None
    makespan_s: float | None
    busy_s: float
    generated_tokens: int
    throughput_tok_s: float | None
    padding_waste: float | None
    latency: LatencyStats


def per_replica(rows: Sequence[RowResult], batches: Sequence[BatchRecord]) -> list[ReplicaMetrics]:
    """The same metrics restricted to each replica (rows that never reached one are left out)."""
    ids = sorted({r.replica for r in rows if r.replica is not None} | {b.replica for b in batches})
    out = []
    for rep in ids:
        rr = [r for r in rows if r.replica == rep]
        bb = [b for b in batches if b.replica == rep]
        out.append(ReplicaMetrics(
            replica=rep, rows=len(rr), ok=sum(r.status == "ok" for r in rr), batches=len(bb),
            slo_attainment=slo_attainment(rr), makespan_s=makespan(bb), busy_s=busy_time(bb),
            generated_tokens=generated_tokens(rr), throughput_tok_s=throughput(rr, bb),
            padding_waste=padding_waste(bb), latency=latency_stats(rr),
        ))
    return out


@dataclass(slots=True)
class RunMetrics:
    """Everything the terminal summary, report.json/html and the history DB show about a run."""

    rows: int
    ok: int
    errors: int
    rejected: int
    rows_with_deadline: int
    slo_met: int
    slo_attainment: float | None
    batches: int
    makespan_s: float | None
    generated_tokens: int
    throughput_tok_s: float | None
    goodput_tok_s: float | None
    padding_waste: float | None
    latency: LatencyStats
    predictor: PredictorError
    replicas: list[ReplicaMetrics] = field(default_factory=list)
    model_load_s: float | None = None
    engine: str | None = None  # what generated the tokens
    engine_note: str | None = None  # why --engine auto chose it
    forecast: dict | None = None
    makespan_forecast_error: float | None = None  # relative_error(forecast, actual makespan)
    batch_finish_forecast_mae_s: float | None = None
    utilisation: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunMetrics:
        """Inverse of to_dict (for re-rendering a report.json)."""
        d = dict(d)
        d["latency"] = LatencyStats(**d["latency"])
        d["predictor"] = PredictorError(**d["predictor"])
        d["replicas"] = [
            ReplicaMetrics(**{**r, "latency": LatencyStats(**r["latency"])}) for r in d.get("replicas", [])
        ]
        return cls(**d)


def summarize(
    results: list[RowResult],
    batches: list[BatchRecord],
    *,
    model_load_s: float | None = None,
    engine: str | None = None,
    engine_note: str | None = None,
    forecast: dict | None = None,
    utilisation: list[dict] | None = None,
) -> RunMetrics:
    """All metrics of one run; forecast is forecast_summary()'s dict (or the planner's).
    `batches` may start with those of earlier attempts of a resumed run (status EARLIER):
    they count for the job's makespan and throughput; the forecast errors are this attempt's."""
    verdicts = [v for v in (row_slo_met(r) for r in results) if v is not None]
    ms = makespan(batches)
    this_attempt = [b for b in batches if b.status != EARLIER]
    return RunMetrics(
        rows=len(results),
        ok=sum(r.status == "ok" for r in results),
        errors=sum(r.status == "error" for r in results),
        rejected=sum(r.status == "rejected" for r in results),
        rows_with_deadline=len(verdicts),
        slo_met=sum(verdicts),
        slo_attainment=slo_attainment(results),
        batches=len(batches),
        makespan_s=ms,
        generated_tokens=generated_tokens(results),
        throughput_tok_s=throughput(results, batches),
        goodput_tok_s=goodput(results, batches),
        padding_waste=padding_waste(batches),
        latency=latency_stats(results),
        predictor=predictor_error(results),
        replicas=per_replica(results, batches),
        model_load_s=model_load_s,
        engine=engine,
        engine_note=engine_note,
        forecast=dict(forecast) if forecast else None,
        makespan_forecast_error=relative_error(forecast_makespan(forecast), makespan(this_attempt)),
        batch_finish_forecast_mae_s=batch_forecast_mae(this_attempt),
        utilisation=utilisation_summary(utilisation or []),
    )
