"""Batch schedulers: SLO-ODBS (ours, the default) and the baselines, behind one registry.

Every policy has one method, `schedule(queries, ctx) -> list[PlannedBatch]`: static batches with
their replica and forecast start/finish, numbered in the order the executor should start them.
Rows with different `Query.group` (sampling settings) never share a batch, in every policy.

- slo-odbs: EDF order (ties: priority, then predicted length). The next batch goes to the
  replica that frees first and grows from the earliest row of its group while (a) the batch's
  memory (KV at the largest predicted_upper + prefill activations) fits the replica's
  kv_budget_bytes, (b) padding waste (spread of predicted_tokens) stays <= max_waste,
  (c) the batch's forecast finish, given its start, pushes no member that would meet its
  deadline past it (rows without a deadline never block; a row that would miss here joins only
  if it could not meet its deadline by waiting for the next free replica either), and
  (d) it has at most max_batch_size rows. One pass, O(N log N).
- fcfs: fixed-size batches in input order.
- edf: fixed-size batches in deadline order.
- sjf: S3-style: predicted length order, packed to the smallest replica memory budget.
- slo-odbs-paper: the published SLO-ODBS (uellm-notes 3.1) with its code's defaults: sort by
  a*SLO + b*length, admit q while w1*T_l + w2*T_o <= threshold, with
  T_l = (SLO_q + L_CM)(n+1)L1 and T_o = (len_q - O_CM)(n+1)L2, and a fixed batch cap.
The baselines form their batches first and then run them in order, each on the replica that
frees first (simulate.place_in_order).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from uellm_cli.errors import ConfigError
from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.simulate import Timeline, place_in_order, planned_batch
from uellm_cli.plan.types import PlannedBatch, Query, Replica

INF = float("inf")


@dataclass(slots=True)
class ScheduleContext:
    """What a policy schedules onto. max_batch_size (the user's --max-batch-size) overrides the
    policy's own default cap. Policies append human-readable notes."""

    replicas: Sequence[Replica]
    cost: CostModel
    start_s: float = 0.0
    max_batch_size: int | None = None
    notes: list[str] = field(default_factory=list)


def edf_key(q: Query) -> tuple:
    """Deadline order; ties go to the row of least work (output, then prompt), so a long prompt
    does not make its equals wait."""
    return (q.deadline_s if q.deadline_s is not None else INF, q.priority, q.predicted_tokens,
            q.prompt_tokens, q.index)


class _Queue:
    """Rows of one sampling group in scheduling order, with the ones already batched marked."""

    __slots__ = ("rows", "used", "head", "late")

    def __init__(self, rows: list[Query], late: bool):
        self.rows, self.used, self.head, self.late = rows, bytearray(len(rows)), 0, late

    def advance(self) -> bool:
        """Move past batched rows; False when none is left."""
        h, n, used = self.head, len(self.rows), self.used
        while h < n and used[h]:
            h += 1
        self.head = h
        return h < n


@dataclass(slots=True)
class SloOdbs:
    """SLO-ODBS done with the cost model (see the module docstring).

    max_waste 0.3: in the compute-bound regime (large batches, CPUs) a padded slot costs as much
    as a useful one, so waste w inflates the cost of every useful token by 1/(1-w): 0.3 caps that
    at +43%, while in the memory-bound regime (small GPU batches) merging rows of different
    lengths is nearly free and the deadline test, not this bound, is what should stop growth.
    lookahead: how many not-yet-batched rows past the earliest one a batch may look at (None =
    2 * max_batch_size). A row that fails the memory, waste or deadline test is passed over (it
    heads a later batch) instead of closing the batch, so rows of similar length and similar
    deadline end up together: the "output-driven" half of SLO-ODBS. A row is never passed over
    for waste when waiting would make it miss a deadline it can meet here. patience: the scan
    stops after that many passed-over rows in a row (the batch is as good as full).
    Overload: a row that would miss its deadline even if it started now, alone, is demoted
    behind every row that can still make it (EDF's domino effect otherwise makes everyone late);
    demoted rows run afterwards, shortest predicted output first, batched for throughput.
    safety 0.1: a batch may grow only while its forecast duration, stretched by 10%, still ends
    before every member's deadline. Forecasts err by about that much (the calibration's fit
    error, machine noise), and a static batch that ends a little late misses for every member
    at once; the margin trades a slightly smaller batch for not falling off that cliff.
    padded_prefill 1.5: left padding makes every row of a static batch prefill the longest
    prompt. Once the padded prefill is over 1.5 times the real one, a row joins only if the batch
    with it ends sooner than the batch without it plus the row alone: a prompt whose prefill
    dwarfs its neighbours' runs on its own instead of holding them hostage.
    """

    name = "slo-odbs"
    safety: float = 0.1
    max_waste: float = 0.3
    padded_prefill: float = 1.5
    max_batch_size: int = 64
    lookahead: int | None = None
    patience: int = 32

    def schedule(self, queries: Sequence[Query], ctx: ScheduleContext) -> list[PlannedBatch]:
        # One long loop on purpose: it is the planner's hot path (100k rows in well under 2 s),
        # so the batch's running shape lives in locals rather than objects.
        if not queries:
            return []
        max_rows = ctx.max_batch_size or self.max_batch_size
        window = self.lookahead if self.lookahead is not None else 2 * max_rows
        cost = ctx.cost
        kv_per_token = cost.model.kv_bytes_per_token
        # activation_bytes(b, n) = b * (n * act_per_token + logits_per_row)
        act_per_token = cost.act * cost.params.activation_factor
        logits_per_row = cost.model.vocab_size * 4
        max_waste = self.max_waste
        padded_prefill = self.padded_prefill
        stretch = 1.0 + self.safety
        by_group: dict[tuple, list[Query]] = {}
        for q in sorted(queries, key=edf_key):
            by_group.setdefault(q.group, []).append(q)
        queues = [_Queue(rows, late=False) for rows in by_group.values()]
        late_rows: list[list[Query]] = [[] for _ in queues]
        heads = [(edf_key(queue.rows[0]), qid) for qid, queue in enumerate(queues)]
        heapq.heapify(heads)
        timeline = Timeline(ctx.replicas, ctx.start_s)
        timers = {r.index: cost.batch_timer(r) for r in ctx.replicas}
        budgets = {r.index: r.kv_budget_bytes for r in ctx.replicas}
        shared: dict[int, dict[int, float]] = {}  # a row's time alone, one table per distinct timer
        alone_tables = {r.index: shared.setdefault(id(timers[r.index]), {}) for r in ctx.replicas}
        out: list[PlannedBatch] = []
        too_big = demoted = 0
        while heads:
            _, qid = heapq.heappop(heads)
            queue = queues[qid]
            rows, used, late, n_rows = queue.rows, queue.used, queue.late, len(queue.rows)
            start, replica = timeline.next()
            timer, budget, alone_s = timers[replica.index], budgets[replica.index], alone_tables[replica.index]
            if not late:
                demoted += _demote_hopeless(queue, late_rows[qid], start, timer, alone_s)
                if queue.head >= n_rows:
                    self._retire(qid, queues, late_rows, heads)
                    continue
            q = rows[queue.head]
            used[queue.head] = 1
            members = [q]
            size, longest_prompt, longest_upper = 1, q.prompt_tokens, q.predicted_upper
            sum_prompt = q.prompt_tokens
            longest_pred = sum_pred = q.predicted_tokens
            if kv_per_token * (longest_prompt + longest_upper) + longest_prompt * act_per_token + logits_per_row > budget:
                too_big += 1
            finish = start + timer(1, longest_prompt, longest_pred)
            deadline = None if late else q.deadline_s
            tightest_met = deadline if deadline is not None and finish <= deadline else INF
            other_free = timeline.earliest_other(replica.index)
            j, seen, misses = queue.head + 1, 0, 0
            while j < n_rows and size < max_rows and seen < window and misses < self.patience:
                if used[j]:
                    j += 1
                    continue
                q = rows[j]
                j += 1
                seen += 1
                misses += 1
                new_size = size + 1
                new_prompt = longest_prompt if longest_prompt >= q.prompt_tokens else q.prompt_tokens
                new_upper = longest_upper if longest_upper >= q.predicted_upper else q.predicted_upper
                if new_size * (kv_per_token * (new_prompt + new_upper) + new_prompt * act_per_token
                               + logits_per_row) > budget:
                    continue
                new_pred = longest_pred if longest_pred >= q.predicted_tokens else q.predicted_tokens
                new_sum = sum_pred + q.predicted_tokens
                deadline = None if late else q.deadline_s
                wasteful = new_pred > 0 and 1.0 - new_sum / (new_size * new_pred) > max_waste
                if wasteful and deadline is None:
                    continue
                if deadline is not None:
                    alone = alone_s.get(q.index)  # q alone, if it waits for the next free replica
                    if alone is None:
                        alone = alone_s[q.index] = timer(1, q.prompt_tokens, q.predicted_tokens)
                    can_wait = (finish if finish < other_free else other_free) + alone <= deadline
                    if wasteful and can_wait:
                        continue  # it can wait for a batch of its own length
                new_finish = start + timer(new_size, new_prompt, new_pred)
                if new_size * new_prompt > padded_prefill * (sum_prompt + q.prompt_tokens):
                    # Most of the prefill would be padding (one long prompt among short ones):
                    # join only if that beats running q on its own, or the long prompt holds
                    # every row of the batch hostage.
                    alone = alone_s.get(q.index)
                    if alone is None:
                        alone = alone_s[q.index] = timer(1, q.prompt_tokens, q.predicted_tokens)
                    if new_finish - finish > alone:
                        continue
                guarded = start + (new_finish - start) * stretch  # the finish the deadline tests use
                if guarded > tightest_met:
                    continue
                if deadline is not None and guarded > deadline:
                    if wasteful or can_wait:
                        continue  # do not drag it late: it can still make it by waiting
                elif deadline is not None and deadline < tightest_met:
                    tightest_met = deadline
                used[j - 1] = 1
                misses = 0
                members.append(q)
                size, longest_prompt, longest_upper = new_size, new_prompt, new_upper
                longest_pred, sum_pred, finish = new_pred, new_sum, new_finish
                sum_prompt += q.prompt_tokens
            out.append(planned_batch(len(out), replica.index, members, start, finish))
            timeline.occupy(replica.index, finish)
            if queue.advance():
                heapq.heappush(heads, (self._key(queue), qid))
            else:
                self._retire(qid, queues, late_rows, heads)
        if too_big:
            ctx.notes.append(f"{too_big} row(s) alone need more memory than a replica's KV budget; "
                             "they run alone (the executor splits or fails them on OOM)")
        if demoted:
            ctx.notes.append(f"{demoted} row(s) cannot meet their deadline even if started first; "
                             "they run after the rows that can (best effort)")
        return out

    @staticmethod
    def _key(queue: _Queue) -> tuple:
        q = queue.rows[queue.head]
        return (INF, INF, q.priority, q.predicted_tokens, q.index) if queue.late else edf_key(q)

    def _retire(self, qid: int, queues: list[_Queue], late_rows: list[list[Query]], heads: list) -> None:
        """A group's deadline queue is empty: its demoted rows become a late queue (SJF order)."""
        if qid >= len(late_rows) or not late_rows[qid]:
            return
        rows = sorted(late_rows[qid], key=lambda q: (q.priority, q.predicted_tokens, q.index))
        late_rows[qid] = []
        queues.append(_Queue(rows, late=True))
        late_rows.append([])
        heapq.heappush(heads, (self._key(queues[-1]), len(queues) - 1))


def _demote_hopeless(queue: _Queue, late: list[Query], start: float, timer,
                     alone_s: dict[int, float]) -> int:
    """Move the rows at the head of `queue` that would miss their deadline even if started
    now, alone, to `late` (they run after every row that can still make it); returns how many."""
    rows, used = queue.rows, queue.used
    moved = 0
    while queue.head < len(rows):
        q = rows[queue.head]
        if q.deadline_s is None:
            break
        alone = alone_s.get(q.index)
        if alone is None:
            alone = alone_s[q.index] = timer(1, q.prompt_tokens, q.predicted_tokens)
        if start + alone <= q.deadline_s:
            break
        used[queue.head] = 1
        late.append(q)
        moved += 1
        queue.advance()
    return moved


def _pack(order: Sequence[Query], start: Callable[[Query], list], add: Callable[[list, Query], bool]) -> list[list[Query]]:
    """Greedy packing in `order`, one open batch per sampling group.

    start(q) -> state (state[0] is the member list); add(state, q) -> admitted (and state updated).
    Batches come out ordered by the position of their first member."""
    open_: dict[tuple, tuple[int, list]] = {}
    done: list[tuple[int, list[Query]]] = []
    for pos, q in enumerate(order):
        cur = open_.get(q.group)
        if cur is not None and add(cur[1], q):
            continue
        if cur is not None:
            done.append((cur[0], cur[1][0]))
        open_[q.group] = (pos, start(q))
    done.extend((p, st[0]) for p, st in open_.values())
    done.sort(key=lambda x: x[0])
    return [members for _, members in done]


def _fixed_size(order: Sequence[Query], size: int) -> list[list[Query]]:
    def add(st, q):
        if len(st[0]) >= size:
            return False
        st[0].append(q)
        return True

    return _pack(order, lambda q: [[q]], add)


@dataclass(slots=True)
class Fcfs:
    name = "fcfs"
    batch_size: int = 16

    def schedule(self, queries: Sequence[Query], ctx: ScheduleContext) -> list[PlannedBatch]:
        order = sorted(queries, key=lambda q: q.index)
        groups = _fixed_size(order, ctx.max_batch_size or self.batch_size)
        return place_in_order(groups, ctx.replicas, ctx.cost, ctx.start_s)


@dataclass(slots=True)
class Edf:
    name = "edf"
    batch_size: int = 16

    def schedule(self, queries: Sequence[Query], ctx: ScheduleContext) -> list[PlannedBatch]:
        order = sorted(queries, key=lambda q: (q.deadline_s if q.deadline_s is not None else INF, q.priority, q.index))
        groups = _fixed_size(order, ctx.max_batch_size or self.batch_size)
        return place_in_order(groups, ctx.replicas, ctx.cost, ctx.start_s)


@dataclass(slots=True)
class Sjf:
    """S3-style: shortest predicted output first, packed to the memory budget of the smallest
    replica (so every batch fits wherever it lands)."""

    name = "sjf"
    max_batch_size: int = 64

    def schedule(self, queries: Sequence[Query], ctx: ScheduleContext) -> list[PlannedBatch]:
        maxb = ctx.max_batch_size or self.max_batch_size
        budget = min((r.kv_budget_bytes for r in ctx.replicas), default=0)
        mem = ctx.cost.batch_memory_bytes

        def add(st, q):
            members, lm, um = st
            nl, nu = max(lm, q.prompt_tokens), max(um, q.predicted_upper)
            if len(members) >= maxb or mem(len(members) + 1, nl, nu) > budget:
                return False
            members.append(q)
            st[1], st[2] = nl, nu
            return True

        order = sorted(queries, key=lambda q: (q.predicted_tokens, q.index))
        groups = _pack(order, lambda q: [[q], q.prompt_tokens, q.predicted_upper], add)
        return place_in_order(groups, ctx.replicas, ctx.cost, ctx.start_s)


@dataclass(slots=True)
class SloOdbsPaper:
    """The published SLO-ODBS. Defaults are those of the authors' code (uellm-notes 3.2): sort
    key SLO + 0.5 * length, only the output term (w1 = 0, w2 = 1, L2 = 1.2), threshold 15000,
    batch cap 10. A row's SLO is its deadline on the run clock; rows without one take the
    largest deadline of the job (0 if none has one)."""

    name = "slo-odbs-paper"
    a: float = 1.0
    b: float = 0.5
    w1: float = 0.0
    w2: float = 1.0
    l1: float = 1.0
    l2: float = 1.2
    threshold: float = 15000.0
    batch_size: int = 10

    def cost_terms(self, slo: float, length: int, n: int, l_cm: float, o_cm: float) -> float:
        """w1*T_l + w2*T_o for adding a query to a batch of n with max SLO l_cm, max length o_cm."""
        t_l = (slo + l_cm) * (n + 1) * self.l1
        t_o = (length - o_cm) * (n + 1) * self.l2
        return self.w1 * t_l + self.w2 * t_o

    def schedule(self, queries: Sequence[Query], ctx: ScheduleContext) -> list[PlannedBatch]:
        size = ctx.max_batch_size or self.batch_size
        finite = [q.deadline_s for q in queries if q.deadline_s is not None]
        fill = max(finite) if finite else 0.0

        def slo(q: Query) -> float:
            return q.deadline_s if q.deadline_s is not None else fill

        def add(st, q):
            members, l_cm, o_cm = st
            n = len(members)
            if n >= size or self.cost_terms(slo(q), q.predicted_tokens, n, l_cm, o_cm) > self.threshold:
                return False
            members.append(q)
            st[1], st[2] = max(l_cm, slo(q)), max(o_cm, q.predicted_tokens)
            return True

        order = sorted(queries, key=lambda q: (self.a * slo(q) + self.b * q.predicted_tokens, q.index))
        groups = _pack(order, lambda q: [[q], slo(q), q.predicted_tokens], add)
        return place_in_order(groups, ctx.replicas, ctx.cost, ctx.start_s)


SCHEDULERS: dict[str, type] = {
    "slo-odbs": SloOdbs,
    "fcfs": Fcfs,
    "sjf": Sjf,
    "edf": Edf,
    "slo-odbs-paper": SloOdbsPaper,
}


def get_scheduler(name: str, params: dict | None = None):
    """An instance of policy `name` with `params` (ConfigError on unknown names)."""
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown policy {name!r}: choose one of {', '.join(SCHEDULERS)}")
    cls = SCHEDULERS[name]
    allowed = {f.name for f in fields(cls)}
    bad = sorted(set(params or {}) - allowed)
    if bad:
        raise ConfigError(f"policy {name} has no parameter {', '.join(bad)} (it has {', '.join(sorted(allowed))})")
    return cls(**(params or {}))


def schedule(queries: Sequence[Query], replicas: Sequence[Replica], cost: CostModel, *,
             policy: str = "slo-odbs", start_s: float = 0.0, max_batch_size: int | None = None,
             params: dict | None = None, notes: list[str] | None = None) -> list[PlannedBatch]:
    """Batches of `queries` on `replicas` by `policy`, with forecast start and finish."""
    if not replicas:
        raise ConfigError("nothing to schedule on: the deployment has no replica")
    ctx = ScheduleContext(replicas, cost, start_s, max_batch_size)
    batches = get_scheduler(policy, params).schedule(queries, ctx)
    if notes is not None:
        notes.extend(ctx.notes)
    return batches
