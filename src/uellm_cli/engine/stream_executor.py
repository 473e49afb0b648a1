"""Run a plan's rows through stream engines (vLLM): all queued at once in the plan's order.

The plan's order is SLO-ODBS's (batches by start time, members in batch order), so a row's
priority is its rank in it: the engine's scheduler then admits rows in deadline order with
predicted lengths, while it forms its own batches step by step (continuous batching).
Finished rows are handed to `on_batch` in small groups (every FLUSH_ROWS rows or FLUSH_S
seconds, whichever comes first), so the result log is as durable as with static batches and
`--resume` works the same. Each group gets a BatchRecord with steps=0: padding waste does not
apply to continuous batching (no row waits on another), so the report leaves it out.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from uellm_cli.engine.base import (
    BatchCallback,
    ExecutionState,
    Replanner,
    StreamRequest,
    StreamResult,
)
from uellm_cli.engine.rows import PreparedRow, error_result, ok_result
from uellm_cli.errors import UellmError
from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.plan.types import Plan, StreamLimits

FLUSH_ROWS = 16
FLUSH_S = 1.0


def plan_order(plan: Plan, indexes: Iterable[int]) -> list[int]:
    """`indexes` in the order the plan starts them; rows the plan does not place go last."""
    wanted = set(indexes)
    order: list[int] = []
    for b in sorted(plan.batches, key=lambda b: (b.start_s, b.batch)):
        order.extend(i for i in b.rows if i in wanted and i not in order)
    seen = set(order)
    return order + sorted(wanted - seen)


def stream_groups(engines: dict, plan: Plan, order: list[int]) -> list[tuple[int, object, list[int]]]:
    """(replica, engine, rows in order) per distinct engine. A row goes to its planned replica's
    engine (the first engine if that replica has none); replicas that share one engine object
    share one stream, reported under the lowest replica index."""
    first = min(engines)
    by_engine: dict[int, tuple[int, object, list[int]]] = {}
    for i in order:
        fc = plan.forecast.get(i)
        replica = fc.replica if fc is not None and fc.replica in engines else first
        engine = engines[replica]
        key = id(engine)
        if key not in by_engine:
            owner = min(r for r, e in engines.items() if e is engine)
            by_engine[key] = (owner, engine, [])
        by_engine[key][2].append(i)
    return list(by_engine.values())


def run_stream(executor: ExecutionState, plan: Plan, rows: dict[int, PreparedRow],
               on_batch: BatchCallback, replan: Replanner | None = None) -> None:
    """Run every row in `rows` on the executor's stream engines; one thread per engine.

    With one engine and a `replan` callback, the plan is revised after each group of results
    (the measured speed against the forecast feeds it, as for static batches), and rows not
    started yet are queued again in the new plan's order: a forecast that was too slow had
    pushed rows behind the others as hopeless that can in fact still make their deadline."""
    groups = stream_groups(executor.engines, plan, plan_order(plan, rows))
    counter = _Counter(0)
    failures: list[BaseException] = []
    if len(groups) != 1 or not callable(getattr(groups[0][1], "reprioritize", None)):
        replan = None

    def one(replica: int, engine, indexes: list[int]) -> None:
        try:
            _run_group(executor, plan, rows, on_batch, replica, engine, indexes, counter, replan)
        except BaseException as exc:  # a bug or --fail-fast: stop every engine
            failures.append(exc)
            executor.stop.set()

    if len(groups) == 1:
        one(*groups[0])
    else:
        threads = [threading.Thread(target=one, args=g, name=f"uellm-stream-{g[0]}", daemon=True)
                   for g in groups]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if failures:
        raise failures[0]


def _run_group(executor, plan, rows, on_batch, replica, engine, indexes, counter, replan) -> None:
    requests = [StreamRequest(index=i, prompt_ids=rows[i].prompt_ids,
                              max_new_tokens=rows[i].row.max_new_tokens,
                              sampling=rows[i].row.sampling, priority=rank)
                for rank, i in enumerate(indexes)]
    limits = plan.stream.get(replica)
    feed = _Feed(limits, indexes) if limits is not None else None
    flusher = _Flusher(executor, plan, rows, on_batch, replica, counter, feed)
    if replan is not None:
        flusher.after_flush = _Reorder(engine, replan, set(indexes), flusher, feed, replica)
    stats = engine.run_stream(requests, clock=executor.clock, on_step=flusher.add,
                              stop=executor.stop, **({"in_flight": feed} if feed else {}))
    with executor.lock:
        executor.step_log.extend(stats.step_log)
    flusher.flush()
    if executor.fail_fast and stats.failure is not None:
        raise stats.failure
    if executor.fail_fast and flusher.first_error is not None:
        r = flusher.first_error
        raise UellmError(f"row {r.id} failed ({r.error_code}): {r.error_message} (--fail-fast)")


class _Feed:
    """How many rows the engine may hold while the next row to give it has a given rank: the
    plan's rule (StreamLimits.in_flight, the latest plan's once revised), with the rows that
    end counted off the ones the demoted rows wait for."""

    def __init__(self, limits: StreamLimits, order: list[int]):
        self.follow(limits, order)

    def follow(self, limits: StreamLimits, order: list[int]) -> None:
        """A plan's limits, with `order` its rows not finished in rank order."""
        self.limits = limits
        # unfinished rows ranked before held_from
        self.waited_for = set(order[:limits.held_from]) if limits.held_from is not None else set()

    def ended(self, indexes: Iterable[int]) -> None:
        self.waited_for.difference_update(indexes)

    def __call__(self, rank: int) -> int:
        return self.limits.in_flight(rank, len(self.waited_for))


class _Reorder:
    """After each written group: ask the replanner for a new plan of the rows not done, and
    give the engine the new order as priorities (it re-queues the rows not started yet)."""

    def __init__(self, engine, replan: Replanner, pending: set[int], flusher: _Flusher,
                 feed: _Feed | None, replica: int):
        self.engine, self.replan, self.pending, self.flusher = engine, replan, pending, flusher
        self.feed, self.replica = feed, replica

    def __call__(self, results: list[RowResult], record: BatchRecord) -> None:
        self.pending.difference_update(r.index for r in results)
        if not self.pending:
            return
        progress = getattr(self.engine, "progress", None)  # rows started, tokens out so far
        started = progress() if progress else None
        if started is not None and self.pending <= started.keys():
            return  # every row left is running: no order to change, and planning would stall the engine
        steps = getattr(self.engine, "steps", None)  # what the engine's steps held and took
        state = {"progress": started} if started is not None else {}
        if steps is not None:
            state["steps"] = steps()
        plan = self.replan(set(self.pending), record, **state)
        if plan is not None:
            self.flusher.plan = plan  # later groups are compared with the revised forecast
            order = plan_order(plan, self.pending)
            if self.feed is not None:
                self.feed.follow(plan.stream.get(self.replica) or self.feed.limits, order)
            self.engine.reprioritize({i: rank for rank, i in enumerate(order)})


class _Counter:
    """Group numbers, unique across the threads of one run."""

    def __init__(self, start: int):
        self._next = start
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            n = self._next
            self._next += 1
            return n


class _Flusher:
    """Collects finished rows and hands them to on_batch every FLUSH_ROWS rows or FLUSH_S s."""

    def __init__(self, executor, plan, rows, on_batch, replica: int, counter: _Counter,
                 feed: _Feed | None = None):
        self.executor, self.plan, self.rows = executor, plan, rows
        self.on_batch, self.replica, self.counter = on_batch, replica, counter
        self.feed = feed  # told of every row that ends, before the engine is fed again
        self.pending: list[RowResult] = []
        self.last = executor.clock()
        self.first_error: RowResult | None = None
        self.after_flush = None  # called with each group once it is written

    def add(self, ended: list[StreamResult]) -> None:
        if self.feed is not None:
            self.feed.ended(r.index for r in ended)
        for r in ended:
            res = self._row_result(r)
            self.pending.append(res)
            if res.status != "ok" and self.first_error is None:
                self.first_error = res
                if self.executor.fail_fast:
                    self.executor.stop.set()  # the engine aborts the rest after this step
        if self.pending and (len(self.pending) >= FLUSH_ROWS
                             or self.executor.clock() - self.last >= FLUSH_S):
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        results, self.pending = self.pending, []
        batch = self.counter()
        for r in results:
            r.batch = batch
        forecasts = [f for r in results if (f := self.plan.forecast.get(r.index)) is not None]
        record = BatchRecord(
            batch=batch, replica=self.replica, rows=[r.index for r in results],
            started_s=min(r.started_s for r in results),
            finished_s=max(r.finished_s for r in results),
            steps=0,  # continuous batching: no padding slots to count
            prompt_width=max((r.prompt_tokens or 0) for r in results),
            output_tokens=sum(r.output_tokens or 0 for r in results if r.status == "ok"),
            forecast_start_s=min((f.start_s for f in forecasts), default=None),
            forecast_finish_s=max((f.finish_s for f in forecasts), default=None),
            status="ok" if all(r.status == "ok" for r in results) else "error",
        )
        with self.executor.lock:
            self.on_batch(results, record)
        self.last = self.executor.clock()
        if self.after_flush is not None:
            self.after_flush(results, record)

    def _row_result(self, r: StreamResult) -> RowResult:
        """Its group's number is set when the group is written (flush)."""
        m = self.rows[r.index]
        if r.generated is None:
            return error_result(m, self.replica, None, r.started_s, r.finished_s,
                                r.error_code or "engine_error", r.error_message)
        return ok_result(m, r.generated, replica=self.replica, batch=None, started_s=r.started_s,
                         finished_s=r.finished_s)
