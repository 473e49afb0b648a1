"""The driver's loop: free replicas pull batches, results come back, lost batches go elsewhere.

Written against `ReplicaPool` (submit a batch to a replica, wait for any one to end), so the
loop is tested with a fake pool that kills replicas on cue; `driver.RayPool` is the real one.

Guarantees, whatever dies when:
- every row is written once: a batch's rows reach `on_batch` only when its result arrives, and
  a row already written is never sent again;
- a batch whose replica died goes back to the queue (to another replica, see queue.py), and
  after MAX_ATTEMPTS losses its rows are written as `replica_lost` errors;
- when no replica is left and rows remain, ReplicasLostError: what is written stays, and
  `--resume` runs the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from uellm_cli.engine.base import BatchCallback
from uellm_cli.engine.rows import PreparedRow, error_result, short_error
from uellm_cli.errors import ReplicasLostError
from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.plan.types import Plan, PlannedBatch
from uellm_cli.ray_backend.queue import MAX_ATTEMPTS, Assignment, BatchQueue

OK, LOST, DEAD, FAILED = "ok", "lost", "dead", "failed"


class ReplicaPool(Protocol):
    """Replicas that run batches. `live`: replica indexes still usable."""

    live: set[int]

    def submit(self, replica: int, planned: PlannedBatch, members: list[PreparedRow]) -> object:
        """Start the batch on the replica; returns a handle for `wait`."""

    def wait(self, handles: list[object]) -> tuple[object, str, object]:
        """Block until one handle ends: (handle, OK, (results, record)) | (handle, LOST, exc:
        the replica died and restarts) | (handle, DEAD, exc: it is gone for good) | (handle,
        FAILED, exc: the batch raised, with the replica alive)."""


@dataclass(slots=True)
class DispatchStats:
    batches: int = 0
    lost: int = 0  # batches whose replica died under them
    given_up: int = 0  # batches written as errors after MAX_ATTEMPTS losses
    replicas_lost: int = 0


def dispatch(pool: ReplicaPool, plan: Plan, rows: dict[int, PreparedRow], on_batch: BatchCallback,
             *, clock: Callable[[], float], stop: threading.Event, fail_fast: bool = False) -> DispatchStats:
    """Run the plan's batches (rows in `rows` only) on the pool until done or `stop` is set."""
    batches = [b for b in plan.batches if any(i in rows for i in b.rows)]
    queue = BatchQueue(batches, [r for r in plan.deployment.replicas if r.index in pool.live])
    stats = DispatchStats()
    written: set[int] = set()
    in_flight: dict[object, tuple[int, Assignment, float]] = {}
    while True:
        if not stop.is_set():
            _fill(pool, queue, rows, written, in_flight, clock)
        if not in_flight:
            break
        handle, kind, value = pool.wait(list(in_flight))
        replica, a, submitted = in_flight.pop(handle)
        if kind == OK:
            results, record = value
            _emit(results, record, rows, written, on_batch)
            stats.batches += 1
            continue
        if kind == FAILED:
            if fail_fast:
                raise value
            members = _members(a, rows, written)
            _emit(_errors(members, replica, a.planned, submitted, clock(), "engine_error", short_error(value)),
                  _record(a.planned, replica, members, submitted, clock()), rows, written, on_batch)
            continue
        stats.lost += 1
        if kind == DEAD:
            pool.live.discard(replica)
            queue.drop_replica(replica)
            stats.replicas_lost += 1
        if not queue.give_back(a, replica):
            stats.given_up += 1
            members = _members(a, rows, written)
            message = f"the replica running it died {MAX_ATTEMPTS} times (last: {short_error(value)})"
            _emit(_errors(members, replica, a.planned, submitted, clock(), "replica_lost", message),
                  _record(a.planned, replica, members, submitted, clock()), rows, written, on_batch)
    left = sum(1 for i in rows if i not in written)
    if left and not stop.is_set():
        raise ReplicasLostError(
            f"every replica died (Ray restarts used up) with {left} row(s) not run; "
            f"{len(written)} row(s) are written",
            hint="rerun the same command (or add --resume) to run the rest",
        )
    return stats


def _fill(pool: ReplicaPool, queue: BatchQueue, rows, written: set[int], in_flight, clock) -> None:
    """Give every free live replica its next batch."""
    busy = {replica for replica, _, _ in in_flight.values()}
    for replica in sorted(pool.live - busy):
        while (a := queue.take(replica)) is not None:
            members = _members(a, rows, written)
            if members:
                in_flight[pool.submit(replica, a.planned, [_slim(m) for m in members])] = (replica, a, clock())
                break


def _members(a: Assignment, rows: dict[int, PreparedRow], written: set[int]) -> list[PreparedRow]:
    return [rows[i] for i in a.planned.rows if i in rows and i not in written]


def _slim(m: PreparedRow) -> PreparedRow:
    """What a replica needs of a row: no prompt text (it has the tokens), no passthrough."""
    return replace(m, row=replace(m.row, prompt=None, messages=None, passthrough={}))


def _emit(results: list[RowResult], record: BatchRecord, rows, written: set[int], on_batch) -> None:
    """Hand results to the writer once per row, with the input's passthrough columns back on."""
    fresh = [r for r in results if r.index not in written]
    if not fresh:
        return
    for r in fresh:
        r.passthrough = rows[r.index].row.passthrough
        written.add(r.index)
    record.rows = [i for i in record.rows if i in {r.index for r in fresh}]
    on_batch(fresh, record)


def _errors(members: list[PreparedRow], replica: int, planned: PlannedBatch, start: float, end: float,
            code: str, message: str) -> list[RowResult]:
    return [error_result(m, replica, planned.batch, start, end, code, message) for m in members]


def _record(planned: PlannedBatch, replica: int, members: list[PreparedRow], start: float,
            end: float) -> BatchRecord:
    return BatchRecord(
        batch=planned.batch, replica=replica, rows=[m.row.index for m in members], started_s=start,
        finished_s=end, steps=0, prompt_width=max((len(m.prompt_ids) for m in members), default=0),
        output_tokens=0, forecast_start_s=planned.start_s, forecast_finish_s=planned.finish_s,
        status="error",
    )
