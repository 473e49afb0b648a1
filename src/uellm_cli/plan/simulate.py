"""The forecast timeline: replicas run their batches one after another; the next batch goes to
the replica that frees first. Also the forecast metrics, by design.md "Metrics":

- a row finishes when its (static) batch finishes; SLO met = finish <= deadline;
- SLO attainment = rows meeting their deadline / rows with a deadline (rows skipped with
  --on-miss skip count as misses; None when no row has a deadline);
- makespan = first batch start to last batch end;
- throughput = predicted generated tokens (never padding) / makespan;
- goodput = predicted tokens of rows that met their deadline (or have none) / makespan;
- padding waste = token steps of padding or finished rows / all token steps (from predicted lengths).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.types import PlannedBatch, Query, Replica, RowForecast


class Timeline:
    """Free time of every replica; `next()` is the replica that frees first (ties: lowest index)."""

    def __init__(self, replicas: Sequence[Replica], start_s: float):
        self.replicas = {r.index: r for r in replicas}
        self.heap = [(start_s, r.index) for r in replicas]
        heapq.heapify(self.heap)
        self.free = {r.index: start_s for r in replicas}

    def next(self) -> tuple[float, Replica]:
        t, i = self.heap[0]
        return t, self.replicas[i]

    def earliest_other(self, index: int) -> float:
        """When the first replica other than `index` frees (inf with one replica)."""
        return min((t for i, t in self.free.items() if i != index), default=float("inf"))

    def occupy(self, index: int, until: float) -> None:
        t, i = heapq.heappop(self.heap)
        assert i == index, "occupy the replica returned by next()"
        self.free[index] = until
        heapq.heappush(self.heap, (until, index))


def batch_shape(members: Sequence[Query]) -> tuple[int, int, int, int]:
    """(rows, longest prompt, longest predicted output, largest budget) of a static batch."""
    return (len(members), max(q.prompt_tokens for q in members),
            max(q.predicted_tokens for q in members), max(q.max_new_tokens for q in members))


def padding_waste(members: Sequence[Query]) -> float:
    """Share of the batch's decode slots (rows x longest predicted output) that are padding."""
    longest = max(q.predicted_tokens for q in members)
    if longest <= 0:
        return 0.0
    return 1.0 - sum(q.predicted_tokens for q in members) / (len(members) * longest)


def planned_batch(number: int, replica: int, members: Sequence[Query], start: float, finish: float) -> PlannedBatch:
    _, _, _, budget = batch_shape(members)
    return PlannedBatch(number, replica, [q.index for q in members], budget, start, finish,
                        padding_waste(members))


def place_in_order(groups: Iterable[Sequence[Query]], replicas: Sequence[Replica], cost: CostModel,
                   start_s: float) -> list[PlannedBatch]:
    """Run the groups in the given order, each on the replica that frees first."""
    tl = Timeline(replicas, start_s)
    timers = {r.index: cost.batch_timer(r) for r in replicas}
    out = []
    for members in groups:
        t, rep = tl.next()
        b, prompt, pred, _ = batch_shape(members)
        finish = t + timers[rep.index](b, prompt, pred)
        out.append(planned_batch(len(out), rep.index, members, t, finish))
        tl.occupy(rep.index, finish)
    return out


def forecast_rows(batches: Iterable[PlannedBatch], deadlines: dict[int, float | None]) -> dict[int, RowForecast]:
    """Every row of every batch finishes with its batch."""
    out = {}
    for b in batches:
        for i in b.rows:
            out[i] = RowForecast(i, b.replica, b.batch, b.start_s, b.finish_s, deadlines.get(i))
    return out


@dataclass(slots=True)
class ForecastMetrics:
    makespan_s: float | None
    slo_attainment: float | None
    throughput_tok_s: float | None
    goodput_tok_s: float | None
    padding_waste: float | None
    rows: int
    rows_with_deadline: int
    rows_missed: int
    start_s: float | None
    finish_s: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def forecast_metrics(batches: Sequence[PlannedBatch], forecast: dict[int, RowForecast],
                     predicted_tokens: dict[int, int]) -> ForecastMetrics:
    """The metrics of a forecast (definitions in the module docstring). `forecast` may hold rows
    outside `batches` (skipped rows): they count for SLO attainment only."""
    start = min((b.start_s for b in batches), default=None)
    finish = max((b.finish_s for b in batches), default=None)
    makespan = finish - start if start is not None else None
    with_deadline = met = 0
    for f in forecast.values():
        if f.deadline_s is not None:
            with_deadline += 1
            met += f.finish_s <= f.deadline_s
    tokens = good = slots = 0
    for b in batches:
        longest = 0
        for i in b.rows:
            p = predicted_tokens.get(i, 0)
            tokens += p
            longest = p if p > longest else longest
            f = forecast[i]
            if f.deadline_s is None or f.finish_s <= f.deadline_s:
                good += p
        slots += len(b.rows) * longest
    per_s = (lambda x: x / makespan) if makespan else (lambda x: None)
    return ForecastMetrics(
        makespan_s=makespan,
        slo_attainment=met / with_deadline if with_deadline else None,
        throughput_tok_s=per_s(tokens),
        goodput_tok_s=per_s(good),
        padding_waste=1.0 - tokens / slots if slots else None,
        rows=len(forecast),
        rows_with_deadline=with_deadline,
        rows_missed=with_deadline - met,
        start_s=start,
        finish_s=finish,
    )
