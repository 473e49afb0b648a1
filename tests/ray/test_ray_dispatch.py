"""The Ray driver's dispatch loop over a scripted, synchronous fake pool: every row written
once, lost batches re-run elsewhere, dead replicas dropped, give-ups and failures as error rows."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from dataclasses import dataclass

import pytest

from uellm_cli.engine.rows import PreparedRow
from uellm_cli.errors import ReplicasLostError
from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.jobs.schema import Row
from uellm_cli.plan.types import Deployment, Plan, PlannedBatch, Replica
from uellm_cli.ray_backend.dispatch import DEAD, FAILED, LOST, OK, dispatch
from uellm_cli.ray_backend.queue import MAX_ATTEMPTS


@dataclass
class Submitted:
    replica: int
    batch: int
    attempt: int  # 1 for the batch's first submission
    nth: int  # 1 for the replica's first submission
    members: list[PreparedRow]

    @property
    def rows(self) -> list[int]:
        return [m.row.index for m in self.members]


class FakePool:
    """Runs nothing: `wait` ends the oldest handle with what `script(sub)` says (OK by default);
    an OK builds one RowResult per member, as an actor's Executor would."""

    def __init__(self, live, script=None):
        self.live = set(live)
        self.script = script or (lambda sub: OK)
        self.submits: list[Submitted] = []
        self._open: dict[int, Submitted] = {}
        self._handles = itertools.count()

    def submit(self, replica, planned, members):
        sub = Submitted(replica, planned.batch,
                        1 + sum(s.batch == planned.batch for s in self.submits),
                        1 + sum(s.replica == replica for s in self.submits), list(members))
        self.submits.append(sub)
        handle = next(self._handles)
        self._open[handle] = sub
        return handle

    def wait(self, handles):
        handle = min(handles)  # the oldest submission ends first
        sub = self._open.pop(handle)
        outcome = self.script(sub)
        kind, exc = outcome if isinstance(outcome, tuple) else (outcome, RuntimeError("actor died"))
        if kind != OK:
            return handle, kind, exc
        results = [RowResult(index=m.row.index, id=m.row.id, status="ok",
                             output_text=f"out-{m.row.index}", finish_reason="stop",
                             prompt_tokens=len(m.prompt_ids), output_tokens=2, replica=sub.replica,
                             batch=sub.batch, started_s=1.0, finished_s=2.0,
                             passthrough=m.row.passthrough) for m in sub.members]
        record = BatchRecord(batch=sub.batch, replica=sub.replica, rows=sub.rows, started_s=1.0,
                             finished_s=2.0, steps=2, prompt_width=1, output_tokens=2 * len(results))
        return handle, OK, (results, record)


def make_rows(n: int) -> dict[int, PreparedRow]:
    return {i: PreparedRow(Row(index=i, line=i + 1, id=f"r{i}", prompt=f"prompt {i}", messages=None,
                               deadline_s=60.0, max_new_tokens=8,
                               passthrough={"user": f"u{i}", "n": i}), [5] * (i + 2), 8)
            for i in range(n)}


def make_plan(n_replicas: int, batches: list[tuple[int, list[int]]]) -> Plan:
    """`batches`: (replica, rows) in plan order."""
    reps = [Replica(r, (), {"": f"cuda:{r}"}, 100) for r in range(n_replicas)]
    pbs = [PlannedBatch(batch=k, replica=r, rows=rows, max_new_tokens=8, start_s=float(k),
                        finish_s=k + 1.0) for k, (r, rows) in enumerate(batches)]
    return Plan("slo-odbs", Deployment("helr-lr", reps), pbs, {})


# 4 batches of 2 rows, alternating over 2 replicas
PLAN = make_plan(2, [(0, [0, 1]), (1, [2, 3]), (0, [4, 5]), (1, [6, 7])])


class Writer:
    def __init__(self):
        self.calls: list[tuple[list[RowResult], BatchRecord]] = []

    def __call__(self, results, record):
        self.calls.append((list(results), record))

    @property
    def results(self) -> list[RowResult]:
        return [r for rs, _ in self.calls for r in rs]

    def by_index(self) -> dict[int, RowResult]:
        return {r.index: r for r in self.results}


def run(pool, plan=PLAN, rows=None, stop=None, **kw):
    rows = make_rows(8) if rows is None else rows
    writer = Writer()
    t = itertools.count()
    stats = dispatch(pool, plan, rows, writer, clock=lambda: float(next(t)),
                     stop=stop or threading.Event(), **kw)
    return stats, writer, rows


def assert_written_once(writer: Writer, indexes) -> None:
    counts = Counter(r.index for r in writer.results)
    assert sorted(counts) == sorted(indexes)
    assert set(counts.values()) == {1}, counts


# ----------------------------------------------------------------------------- all well


def test_every_row_is_written_once_with_its_passthrough_back():
    pool = FakePool({0, 1})
    stats, writer, rows = run(pool)
    assert_written_once(writer, range(8))
    assert stats.batches == 4 and stats.lost == 0
    for r in writer.results:
        assert r.status == "ok"
        assert r.passthrough == {"user": f"u{r.index}", "n": r.index}
    for results, record in writer.calls:
        assert sorted(record.rows) == sorted(r.index for r in results)
    # each replica ran its own batches, in plan order
    assert [(s.replica, s.batch) for s in pool.submits if s.replica == 0] == [(0, 0), (0, 2)]
    assert [(s.replica, s.batch) for s in pool.submits if s.replica == 1] == [(1, 1), (1, 3)]


def test_replicas_get_rows_without_prompt_text_or_passthrough():
    pool = FakePool({0, 1})
    _, _, rows = run(pool)
    for sub in pool.submits:
        for m in sub.members:
            assert m.row.prompt is None and m.row.messages is None and m.row.passthrough == {}
            assert m.prompt_ids == rows[m.row.index].prompt_ids
            assert m.row.max_new_tokens == rows[m.row.index].row.max_new_tokens
    # the driver's own rows are untouched
    assert all(p.row.prompt == f"prompt {i}" and p.row.passthrough["n"] == i for i, p in rows.items())


def test_batches_of_a_replica_that_did_not_start_run_on_the_others():
    pool = FakePool({1})  # replica 0 of the plan failed to start
    _, writer, _ = run(pool)
    assert_written_once(writer, range(8))
    assert {s.replica for s in pool.submits} == {1}


# ----------------------------------------------------------------------------- lost and dead


def test_a_lost_batch_is_run_again_on_another_replica():
    pool = FakePool({0, 1}, lambda s: LOST if (s.batch, s.attempt) == (0, 1) else OK)
    stats, writer, _ = run(pool)
    assert_written_once(writer, range(8))
    runs = [s.replica for s in pool.submits if s.batch == 0]
    assert runs == [0, 1]
    assert stats.lost == 1 and stats.replicas_lost == 0 and stats.given_up == 0
    assert all(r.status == "ok" for r in writer.results)
    assert 0 in pool.live  # lost (restarted), not dead


def test_a_lost_batch_goes_back_to_its_replica_when_it_is_the_only_one():
    plan = make_plan(1, [(0, [0, 1]), (0, [2, 3])])
    pool = FakePool({0}, lambda s: LOST if (s.batch, s.attempt) == (0, 1) else OK)
    stats, writer, _ = run(pool, plan, make_rows(4))
    assert_written_once(writer, range(4))
    assert [s.batch for s in pool.submits] == [0, 0, 1]
    assert stats.lost == 1


def test_a_dead_replica_is_dropped_and_its_batches_run_on_the_others():
    pool = FakePool({0, 1}, lambda s: DEAD if s.replica == 0 else OK)
    stats, writer, _ = run(pool)
    assert_written_once(writer, range(8))
    assert all(r.status == "ok" for r in writer.results)
    assert [s.batch for s in pool.submits if s.replica == 0] == [0]  # never used again
    assert sorted(s.batch for s in pool.submits if s.replica == 1) == [0, 1, 2, 3]
    assert pool.live == {1}
    assert stats.replicas_lost == 1 and stats.lost == 1


def test_a_batch_lost_max_attempts_times_becomes_replica_lost_error_rows():
    pool = FakePool({0, 1}, lambda s: LOST if s.batch == 0 else OK)
    stats, writer, _ = run(pool)
    assert_written_once(writer, range(8))
    assert sum(s.batch == 0 for s in pool.submits) == MAX_ATTEMPTS
    by = writer.by_index()
    for i in (0, 1):
        assert by[i].status == "error" and by[i].error_code == "replica_lost"
        assert by[i].batch == 0 and by[i].passthrough == {"user": f"u{i}", "n": i}
    assert all(by[i].status == "ok" for i in range(2, 8))
    assert stats.given_up == 1 and stats.lost == MAX_ATTEMPTS
    (record,) = [rec for _, rec in writer.calls if rec.batch == 0]
    assert record.status == "error" and sorted(record.rows) == [0, 1]


def test_when_every_replica_dies_the_rows_written_stay_and_the_run_fails():
    # replica 0 finishes its first batch, then both die
    pool = FakePool({0, 1}, lambda s: OK if (s.replica, s.nth) == (0, 1) else DEAD)
    writer = Writer()
    t = itertools.count()
    with pytest.raises(ReplicasLostError, match="6 row"):
        dispatch(pool, PLAN, make_rows(8), writer, clock=lambda: float(next(t)),
                 stop=threading.Event())
    assert_written_once(writer, [0, 1])
    assert pool.live == set()


def test_with_no_live_replica_at_all_nothing_runs_and_the_run_fails():
    pool = FakePool(set())
    with pytest.raises(ReplicasLostError):
        run(pool)
    assert pool.submits == []


# ----------------------------------------------------------------------------- failures


def test_a_failed_batch_becomes_engine_error_rows_and_the_job_goes_on():
    boom = (FAILED, ValueError("boom in kernel"))
    pool = FakePool({0, 1}, lambda s: boom if s.batch == 1 else OK)
    stats, writer, _ = run(pool)
    assert_written_once(writer, range(8))
    by = writer.by_index()
    for i in (2, 3):
        assert by[i].status == "error" and by[i].error_code == "engine_error"
        assert "boom in kernel" in by[i].error_message
        assert by[i].passthrough == {"user": f"u{i}", "n": i}
    assert all(by[i].status == "ok" for i in (0, 1, 4, 5, 6, 7))
    assert sum(s.batch == 1 for s in pool.submits) == 1  # not retried: the replica is fine
    assert stats.lost == 0


def test_fail_fast_re_raises_a_failed_batch():
    pool = FakePool({0, 1}, lambda s: (FAILED, ValueError("boom")) if s.batch == 0 else OK)
    with pytest.raises(ValueError, match="boom"):
        run(pool, fail_fast=True)


# ----------------------------------------------------------------------------- stop and resume


def test_stop_before_start_submits_nothing():
    stop = threading.Event()
    stop.set()
    pool = FakePool({0, 1})
    stats, writer, _ = run(pool, stop=stop)
    assert pool.submits == [] and writer.calls == []
    assert stats.batches == 0


def test_stop_during_the_run_lets_running_batches_finish_and_starts_no_more():
    stop = threading.Event()
    pool = FakePool({0, 1})
    writer = Writer()

    def on_batch(results, record):
        writer(results, record)
        stop.set()

    t = itertools.count()
    dispatch(pool, PLAN, make_rows(8), on_batch, clock=lambda: float(next(t)), stop=stop)
    assert [s.batch for s in pool.submits] == [0, 1]  # the two started before the stop
    assert_written_once(writer, [0, 1, 2, 3])


def test_rows_already_written_before_a_resume_are_never_sent():
    rows = make_rows(8)
    for i in (2, 3, 5):  # written by the previous run
        del rows[i]
    pool = FakePool({0, 1})
    _, writer, _ = run(pool, rows=rows)
    sent = [i for s in pool.submits for i in s.rows]
    assert sorted(sent) == [0, 1, 4, 6, 7]
    assert 1 not in {s.batch for s in pool.submits}  # nothing left of batch 1
    assert_written_once(writer, [0, 1, 4, 6, 7])
