"""`uellm plan` for people: the chosen deployment, the alternatives judged, the batch timeline,
the rows forecast to miss, and the notes, as rich renderables (the command prints them)."""

from __future__ import annotations

from rich.table import Table

from uellm_cli.plan.replicas import tied_head_modules, usable_bytes
from uellm_cli.plan.types import Plan, Query, StreamLimits
from uellm_cli.profile.devices import Cluster
from uellm_cli.profile.model_profile import ModelProfile
from uellm_cli.report.formats import fmt_bytes, fmt_expected_slo, fmt_pct, fmt_rate, fmt_s

MISSED_SHOWN = 15


def render_plan(plan: Plan, profile: ModelProfile, cluster: Cluster,
                queries: dict[int, Query]) -> list:
    """Rich renderables: deployment, alternatives, timeline summary, rows forecast to miss, notes."""
    dep = plan.deployment
    summary = plan.summary
    out: list = [
        f"[bold]{profile.name}[/bold] ({profile.dtype}, {profile.num_layers} layers, "
        f"{fmt_bytes(profile.weight_bytes)} weights) on {len(cluster.devices)} device(s); "
        f"engine [bold]{plan.engine}[/bold], policy [bold]{plan.policy}[/bold], "
        f"deployment [bold]{dep.strategy}[/bold] "
        f"with {len(dep.replicas)} replica(s)",
        _deployment_table(plan, profile, cluster),
        _alternatives_table(plan),
        _timeline_table(plan),
        f"forecast: makespan {fmt_s(summary.get('makespan_s'))}{_expected(summary)}, SLO attainment "
        f"{fmt_pct(summary.get('slo_attainment'))}{_drawn(summary)} of "
        f"{summary.get('rows_with_deadline', 0)} rows with a deadline, throughput "
        f"{fmt_rate(summary.get('throughput_tok_s'))}, padding waste "
        f"{fmt_pct(summary.get('padding_waste'))}; first batch at {plan.start_offset_s:.1f} s "
        "(after loading)",
        _missed_table(plan, queries),
    ]
    sources: dict[str, list[str]] = {}
    for dev in plan.cost_model.get("devices", []):
        sources.setdefault(dev["source"], []).append(dev["device"])
    out.append("[dim]cost model: " + "; ".join(f"{src} for {', '.join(ids)}"
                                               for src, ids in sources.items()) + "[/dim]")
    out.extend(f"[yellow]note:[/yellow] {note}" for note in plan.notes)
    return out


def _expected(summary: dict) -> str:
    """" at the rows' likely lengths, 5.2 min expected at their mean lengths" when the plan has
    an expected makespan apart from its makespan at the points, else ""."""
    expected = summary.get("expected_makespan_s")
    if expected is None or abs(expected - (summary.get("makespan_s") or 0.0)) < 0.05:
        return ""
    return f" at the rows' likely lengths, {fmt_s(expected)} expected at their mean lengths"


def _drawn(summary: dict) -> str:
    """" at the rows' likely lengths, 55% expected (51-59% over 16 draws of the rows' lengths)"
    when the plan was simulated on drawn lengths, else ""."""
    drawn = fmt_expected_slo(summary)
    return "" if drawn is None else f" at the rows' likely lengths, {drawn}"


def _deployment_table(plan: Plan, profile: ModelProfile, cluster: Cluster) -> Table:
    t = Table(title="Chosen deployment", title_justify="left")
    for col in ("replica", "device", "layers", "also", "weights", "KV reserve", "usable memory"):
        t.add_column(col, justify="right" if col in ("weights", "KV reserve", "usable memory") else "left")
    for r in plan.deployment.replicas:
        for i, s in enumerate(r.stages):
            also = []
            if s.has_embed:
                also.append("embeddings")
            if s.has_head:
                also.append("head")
            if profile.tied_embeddings and i == 0 and len(r.stages) > 1:
                also.append(f"{', '.join(tied_head_modules(profile))} (tied)")
            layers = f"{s.first_layer}-{s.last_layer - 1}" if s.num_layers else "none"
            mem = sum(usable_bytes(cluster.device(d).memory_bytes) for d in s.devices)
            where = s.device if s.tp == 1 else f"{'+'.join(s.devices)} (tp {s.tp})"
            t.add_row(str(r.index), where, layers, ", ".join(also), fmt_bytes(s.weight_bytes),
                      fmt_bytes(s.kv_reserve_bytes), fmt_bytes(mem))
    return t


def _alternatives_table(plan: Plan) -> Table:
    t = Table(title="Alternatives (forecast)", title_justify="left")
    for col in ("", "strategy", "replicas", "devices", "makespan", "SLO attainment", "throughput",
                "judged on"):
        t.add_column(col)
    for a in plan.alternatives:
        t.add_row("*" if a["chosen"] else "", a["strategy"], str(a["replicas"]), str(a["n_devices"]),
                  fmt_s(a["makespan_s"]), fmt_pct(a["slo_attainment"]), fmt_rate(a["throughput_tok_s"]),
                  f"{a['judged_rows']} rows")
    return t


def _timeline_table(plan: Plan) -> Table:
    if plan.stream:
        return _stream_table(plan)
    t = Table(title="Batch timeline", title_justify="left")
    for col in ("replica", "batches", "rows", "mean batch", "first start", "last finish"):
        t.add_column(col, justify="right")
    for r in plan.deployment.replicas:
        bs = [b for b in plan.batches if b.replica == r.index]
        rows = sum(len(b.rows) for b in bs)
        t.add_row(str(r.index), str(len(bs)), str(rows), f"{rows / len(bs):.1f}" if bs else "n/a",
                  fmt_s(min((b.start_s for b in bs), default=None)),
                  fmt_s(max((b.finish_s for b in bs), default=None)))
    return t


def _stream_table(plan: Plan) -> Table:
    """A continuous-batching plan has no batches: each replica's scheduler limits instead."""
    t = Table(title="Continuous batching (simulated)", title_justify="left")
    for col in ("replica", "rows", "max seqs", "tokens/step", "KV blocks", "held back",
                "first start", "last finish"):
        t.add_column(col, justify="right")
    for r in plan.deployment.replicas:
        bs = [b for b in plan.batches if b.replica == r.index]
        lim = plan.stream.get(r.index)
        if lim is None:
            continue
        held = _held_back(lim)
        t.add_row(str(r.index), str(sum(len(b.rows) for b in bs)), str(lim.max_num_seqs),
                  str(lim.max_num_batched_tokens), f"{lim.kv_blocks} x {lim.block_size}", held,
                  fmt_s(min((b.start_s for b in bs), default=None)),
                  fmt_s(max((b.finish_s for b in bs), default=None)))
    return t


def _held_back(lim: StreamLimits) -> str:
    """What we hold back from the engine, e.g. '32 at once for 91; rows from rank 154 until 32 left'."""
    parts = [f"{lim.early_cap} at once for {lim.early_rows}"] if lim.early_cap else []
    if lim.held_from is not None:
        parts.append(f"rows from rank {lim.held_from} until {lim.held_release} left")
    return "; ".join(parts) or "no"


def _missed_table(plan: Plan, queries: dict[int, Query]) -> Table | str:
    missed = sorted((f for f in plan.forecast.values() if f.slo_met is False), key=lambda f: f.deadline_s)
    if not missed:
        return "no row is forecast to miss its deadline"
    skipped = set(plan.skipped)
    t = Table(title=f"Rows forecast to miss their deadline ({len(missed)})", title_justify="left")
    for col in ("id", "deadline", "forecast finish", "late by", "status"):
        t.add_column(col)
    for f in missed[:MISSED_SHOWN]:
        q = queries.get(f.index)
        t.add_row(q.id if q else str(f.index), fmt_s(f.deadline_s), fmt_s(f.finish_s),
                  fmt_s(f.finish_s - f.deadline_s), "skipped" if f.index in skipped else "runs")
    if len(missed) > MISSED_SHOWN:
        t.add_row(f"... {len(missed) - MISSED_SHOWN} more", "", "", "", "")
    return t
