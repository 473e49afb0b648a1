"""BatchQueue: which batch a free replica pulls next (own, stolen, orphaned, given up)."""

from __future__ import annotations

from uellm_cli.plan.types import PlannedBatch, Replica
from uellm_cli.ray_backend.queue import MAX_ATTEMPTS, BatchQueue


def rep(index: int, budget: int = 100) -> Replica:
    return Replica(index, (), {"": f"cuda:{index}"}, budget)


def pb(batch: int, replica: int, start: float) -> PlannedBatch:
    return PlannedBatch(batch=batch, replica=replica, rows=[batch * 10, batch * 10 + 1],
                        max_new_tokens=8, start_s=start, finish_s=start + 1.0)


def drain(q: BatchQueue, replica: int) -> list[int]:
    out = []
    while (a := q.take(replica)) is not None:
        out.append(a.planned.batch)
    return out


def test_batches_come_in_plan_order_start_then_batch_number():
    batches = [pb(3, 0, 5.0), pb(1, 0, 2.0), pb(4, 0, 2.0), pb(0, 0, 9.0), pb(2, 0, 0.0)]
    q = BatchQueue(batches, [rep(0)])
    assert [a.planned.batch for a in q.pending()] == [2, 1, 4, 3, 0]
    assert drain(q, 0) == [2, 1, 4, 3, 0]
    assert len(q) == 0 and q.take(0) is None


def test_a_replica_runs_its_own_batches_before_stealing():
    q = BatchQueue([pb(0, 1, 0.0), pb(1, 0, 5.0), pb(2, 1, 1.0)], [rep(0), rep(1)])
    assert q.take(0).planned.batch == 1  # its own, though replica 1's batch starts earlier
    assert q.take(0).planned.batch == 0  # then replica 1's earliest
    assert q.take(1).planned.batch == 2
    assert q.take(1) is None


def test_stealing_needs_at_least_the_other_replicas_memory_budget():
    replicas = [rep(0, budget=50), rep(1, budget=100), rep(2, budget=20)]
    q = BatchQueue([pb(0, 1, 0.0), pb(1, 2, 1.0)], replicas)
    # replica 0 may not take replica 1's (bigger) batch, so it takes replica 2's later one
    assert q.take(0).planned.batch == 1
    assert q.take(0) is None
    assert q.take(2) is None  # smaller budget than replica 1 too
    assert q.take(1).planned.batch == 0


def test_equal_budget_is_enough_to_steal():
    q = BatchQueue([pb(0, 1, 0.0)], [rep(0, budget=70), rep(1, budget=70)])
    assert q.take(0).planned.batch == 0


def test_batches_of_a_replica_that_never_started_go_to_anyone():
    # the plan has replica 5, but it is not among the replicas that started
    q = BatchQueue([pb(0, 5, 0.0), pb(1, 5, 1.0)], [rep(0, budget=1)])
    assert drain(q, 0) == [0, 1]


def test_an_orphan_comes_first_for_another_replica():
    q = BatchQueue([pb(0, 0, 0.0), pb(1, 1, 1.0), pb(2, 1, 2.0), pb(3, 0, 3.0)],
                   [rep(0), rep(1)])
    a = q.take(0)
    assert a.planned.batch == 0
    assert q.give_back(a, lost_on=0) is True
    assert a.orphan and a.lost_on == [0]
    # the replica that lost it gets its next own batch, not the orphan
    assert q.take(0).planned.batch == 3
    # replica 1 gets the orphan before its own earlier-planned batches
    assert q.take(1).planned.batch == 0
    assert drain(q, 1) == [1, 2]


def test_an_orphan_waits_for_a_replica_that_did_not_lose_it():
    q = BatchQueue([pb(0, 0, 0.0)], [rep(0), rep(1)])
    a = q.take(0)
    q.give_back(a, lost_on=0)
    assert q.take(0) is None  # replica 1 is alive: it should run it
    assert len(q) == 1
    assert q.take(1) is a


def test_an_orphan_goes_back_to_the_replica_that_lost_it_when_it_is_the_only_one():
    q = BatchQueue([pb(0, 0, 0.0), pb(1, 1, 1.0)], [rep(0), rep(1)])
    a = q.take(0)
    q.give_back(a, lost_on=0)
    q.drop_replica(1)
    assert q.take(0) is a
    assert q.take(0).planned.batch == 1  # the dropped replica's batch too

    alone = BatchQueue([pb(0, 0, 0.0)], [rep(0)])
    b = alone.take(0)
    alone.give_back(b, lost_on=0)
    assert alone.take(0) is b


def test_an_orphan_lost_on_every_live_replica_is_taken_by_any_of_them():
    q = BatchQueue([pb(0, 0, 0.0)], [rep(0), rep(1)])
    a = q.take(0)
    q.give_back(a, lost_on=0)
    assert q.take(1) is a
    q.give_back(a, lost_on=1)
    assert q.take(0) is a  # nobody left that has not lost it: do not wait forever


def test_orphans_ignore_memory_budgets():
    q = BatchQueue([pb(0, 1, 0.0)], [rep(0, budget=10), rep(1, budget=100)])
    a = q.take(1)
    q.give_back(a, lost_on=1)
    assert q.take(0) is a


def test_given_back_batch_returns_to_its_plan_position():
    q = BatchQueue([pb(0, 0, 0.0), pb(1, 0, 1.0), pb(2, 0, 2.0), pb(3, 0, 3.0)], [rep(0), rep(1)])
    q.take(0)
    b = q.take(0)
    assert b.planned.batch == 1
    q.give_back(b, lost_on=0)
    assert [a.planned.batch for a in q.pending()] == [1, 2, 3]


def test_give_back_gives_up_at_max_attempts():
    q = BatchQueue([pb(0, 0, 0.0), pb(1, 0, 1.0)], [rep(0)])
    a = q.take(0)
    for attempt in range(1, MAX_ATTEMPTS):
        assert q.give_back(a, lost_on=0) is True
        assert q.take(0) is a
        assert len(a.lost_on) == attempt
    assert q.give_back(a, lost_on=0) is False
    assert len(a.lost_on) == MAX_ATTEMPTS
    assert [x.planned.batch for x in q.pending()] == [1]  # not queued again


def test_dropped_replicas_batches_go_to_others_whatever_their_budget():
    q = BatchQueue([pb(0, 1, 0.0), pb(1, 1, 1.0), pb(2, 0, 2.0)],
                   [rep(0, budget=10), rep(1, budget=1000)])
    assert q.take(0).planned.batch == 2
    assert q.take(0) is None  # replica 1's batches need more memory than replica 0 has
    q.drop_replica(1)
    assert 1 not in q.live
    assert drain(q, 0) == [0, 1]
