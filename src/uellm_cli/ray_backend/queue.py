"""Which batch a free replica runs next: the pull side of the Ray backend, in plain Python.

Replicas pull; nothing is pushed. A free replica takes, in this order:
1. a batch whose replica died while running it (an *orphan*, overdue by definition), unless it
   is a replica that lost it and another live replica can take it instead;
2. its own next batch, in plan order;
3. the earliest batch planned for another replica that has not started (so a slow or lost
   replica does not hold the job), if its memory budget is at least that replica's.
A batch lost MAX_ATTEMPTS times is given up: its rows become error rows, never a retry loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from uellm_cli.plan.types import PlannedBatch, Replica

MAX_ATTEMPTS = 3


@dataclass(slots=True)
class Assignment:
    """A planned batch and its history of lost attempts (replica indexes that died running it)."""

    planned: PlannedBatch
    lost_on: list[int] = field(default_factory=list)

    @property
    def orphan(self) -> bool:
        return bool(self.lost_on)


class BatchQueue:
    """Pending batches in plan order (forecast start, then batch number)."""

    def __init__(self, batches: list[PlannedBatch], replicas: list[Replica]):
        self._pending = [Assignment(b) for b in sorted(batches, key=lambda b: (b.start_s, b.batch))]
        self._budget = {r.index: r.kv_budget_bytes for r in replicas}
        self.live: set[int] = {r.index for r in replicas}

    def __len__(self) -> int:
        return len(self._pending)

    def pending(self) -> list[Assignment]:
        return list(self._pending)

    def take(self, replica: int) -> Assignment | None:
        """The next batch for `replica` (removed from the queue), or None. An orphan waits for
        another live replica rather than go back to one that lost it."""
        others = self.live - {replica}
        for a in self._pending:
            if a.orphan and (replica not in a.lost_on or not self._could_take(a, others)):
                return self._pop(a)
        for a in self._pending:
            if not a.orphan and a.planned.replica == replica:
                return self._pop(a)
        for a in self._pending:
            if not a.orphan and self._fits(replica, a.planned.replica):
                return self._pop(a)
        return None

    def give_back(self, a: Assignment, lost_on: int) -> bool:
        """The replica running `a` died. Back in the queue at its plan position (True), or given
        up after MAX_ATTEMPTS (False: the caller writes its rows as errors)."""
        a.lost_on.append(lost_on)
        if len(a.lost_on) >= MAX_ATTEMPTS:
            return False
        key = (a.planned.start_s, a.planned.batch)
        pos = next((i for i, b in enumerate(self._pending)
                    if (b.planned.start_s, b.planned.batch) > key), len(self._pending))
        self._pending.insert(pos, a)
        return True

    def drop_replica(self, replica: int) -> None:
        """`replica` is gone for good: its batches go to the others."""
        self.live.discard(replica)

    def _could_take(self, a: Assignment, candidates: set[int]) -> bool:
        return any(r not in a.lost_on for r in candidates)

    def _fits(self, replica: int, planned_for: int) -> bool:
        """A batch sized for `planned_for` may run on `replica` when its memory budget is no
        smaller (an out-of-memory batch would still be split, but that costs time)."""
        if planned_for not in self.live:
            return True  # its replica is gone: someone must run it
        return self._budget.get(replica, 0) >= self._budget.get(planned_for, 0)

    def _pop(self, a: Assignment) -> Assignment:
        self._pending.remove(a)
        return a
