"""Executor behaviour with a scripted engine: OOM split, per-batch errors, fail-fast, order."""

from __future__ import annotations

import pytest

from uellm_cli.engine.base import BatchOutput, Generated
from uellm_cli.engine.executor import Executor
from uellm_cli.engine.rows import PreparedRow
from uellm_cli.jobs.schema import Row
from uellm_cli.plan.types import Deployment, Plan, PlannedBatch, Replica


class ScriptedEngine:
    """Generates 'out-<len(prompt)>' per row; fails as told."""

    def __init__(self, oom_above: int | None = None, oom_rows: set[int] = frozenset(),
                 fail_batches_with: set[int] = frozenset()):
        self.oom_above = oom_above
        self.oom_rows = oom_rows  # prompt lengths that OOM even alone
        self.fail_with = fail_batches_with
        self.calls: list[list[int]] = []

    def generate(self, prompts, *, max_new_tokens, sampling):
        lens = [len(p) for p in prompts]
        self.calls.append(lens)
        if self.oom_above is not None and len(prompts) > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any(n in self.oom_rows for n in lens):
            raise MemoryError("can't allocate")
        if any(n in self.fail_with for n in lens):
            raise ValueError("boom in kernel")
        gens = [Generated(f"out-{n}", min(3, m), "stop") for n, m in zip(lens, max_new_tokens, strict=False)]
        return BatchOutput(gens, steps=3, prompt_width=max(lens))


def _rows(n: int) -> dict[int, PreparedRow]:
    # prompt length = index + 1, so each row is recognisable in the engine
    return {
        i: PreparedRow(Row(index=i, line=i + 1, id=f"r{i}", prompt="x", messages=None,
                           deadline_s=100.0, max_new_tokens=8), [7] * (i + 1), 8)
        for i in range(n)
    }


def _plan(batches: list[list[int]]) -> Plan:
    rep = Replica(0, (), {"": "cpu"}, 0)
    pbs = [PlannedBatch(batch=k, replica=0, rows=rows, max_new_tokens=8, start_s=k, finish_s=k + 1)
           for k, rows in enumerate(batches)]
    return Plan("test", Deployment("single", [rep]), pbs, {})


def _run(engine, plan, rows, **kw):
    got = []
    t = iter(range(10_000))
    ex = Executor({0: engine}, clock=lambda: float(next(t)), **kw)
    ex.run(plan, rows, lambda results, record: got.append((results, record)))
    return got


def test_oom_batch_is_split_in_half_until_it_fits():
    engine = ScriptedEngine(oom_above=2)
    got = _run(engine, _plan([[0, 1, 2, 3, 4, 5, 6, 7]]), _rows(8))
    results = [r for rs, _ in got for r in rs]
    assert sorted(r.index for r in results) == list(range(8))
    assert all(r.status == "ok" for r in results)
    assert engine.calls[0] == list(range(1, 9))  # the full batch was tried first
    assert max(len(c) for c in engine.calls[1:]) <= 4
    assert got[0][1].status == "oom_split"


def test_row_that_ooms_alone_is_an_oom_error_and_the_rest_run():
    engine = ScriptedEngine(oom_rows={3})  # row index 2 has prompt length 3
    got = _run(engine, _plan([[0, 1, 2, 3]]), _rows(4))
    by = {r.index: r for rs, _ in got for r in rs}
    assert by[2].status == "error" and by[2].error_code == "oom"
    assert [by[i].status for i in (0, 1, 3)] == ["ok", "ok", "ok"]


def test_other_exception_marks_the_batch_and_the_job_goes_on():
    engine = ScriptedEngine(fail_batches_with={1})
    got = _run(engine, _plan([[0, 1], [2, 3]]), _rows(4))
    by = {r.index: r for rs, _ in got for r in rs}
    assert by[0].status == by[1].status == "error"
    assert by[0].error_code == "engine_error" and "boom in kernel" in by[0].error_message
    assert by[2].status == by[3].status == "ok"


def test_fail_fast_stops_at_the_first_failed_batch():
    engine = ScriptedEngine(fail_batches_with={1})
    with pytest.raises(ValueError, match="boom"):
        _run(engine, _plan([[0, 1], [2, 3]]), _rows(4), fail_fast=True)
    assert len(engine.calls) == 1


def test_rows_outside_the_todo_set_are_not_run():
    engine = ScriptedEngine()
    rows = _rows(4)
    del rows[1]
    got = _run(engine, _plan([[0, 1], [2, 3]]), rows)
    assert sorted(r.index for rs, _ in got for r in rs) == [0, 2, 3]


def test_stop_event_stops_between_batches():
    import threading

    stop = threading.Event()
    engine = ScriptedEngine()
    got = []
    t = iter(range(10_000))
    ex = Executor({0: engine}, clock=lambda: float(next(t)), stop=stop)

    def on_batch(results, record):
        got.append(results)
        stop.set()

    ex.run(_plan([[0], [1], [2]]), _rows(3), on_batch)
    assert len(got) == 1 and len(engine.calls) == 1
