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
from uellm_cli.plan.simulate import Timeline, place_in_order, planned_batch
from uellm_cli.plan.types import PlannedBatch, Query, Replica
from uellm_cli.profile.costmodel import CostModel

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
    return (q.deadline_s if q.deadline_s is not None else INF, q.priority, q.predicted_tokens, q.index)


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
    """

    name = "slo-odbs"
    safety: float = 0.1
    max_waste: float = 0.3
    max_batch_size: int = 64
    lookahead: int | None = None
    patience: int = 32

    def schedule(self, queries: Sequence[Query], ctx: ScheduleContext) -> list[PlannedBatch]:
        # One long loop on purpose: it is the planner's hot path (100k rows in well under 2 s).
        if not queries:
            return []
        maxb = ctx.max_batch_size or self.max_batch_size
        window = self.lookahead if self.lookahead is not None else 2 * maxb
        cost = ctx.cost
        kvpt = cost.model.kv_bytes_per_token
        act_tok = cost.act * cost.params.activation_factor  # activation_bytes(b, n) = b * (n * act_tok + act_row)
        act_row = cost.model.vocab_size * 4
        max_waste = self.max_waste
        stretch = 1.0 + self.safety
        by_group: dict[tuple, list[Query]] = {}
        for q in sorted(queries, key=edf_key):
            by_group.setdefault(q.group, []).append(q)
        queues = [_Queue(rows, late=False) for rows in by_group.values()]
        late_rows: list[list[Query]] = [[] for _ in queues]
        heads = [(edf_key(qu.rows[0]), qid) for qid, qu in enumerate(queues)]
        heapq.heapify(heads)
        tl = Timeline(ctx.replicas, ctx.start_s)
        timers = {r.index: cost.batch_timer(r) for r in ctx.replicas}
        budgets = {r.index: r.kv_budget_bytes for r in ctx.replicas}
        shared: dict[int, dict[int, float]] = {}  # a row's time alone, one table per distinct timer
        solo = {r.index: shared.setdefault(id(timers[r.index]), {}) for r in ctx.replicas}
        out: list[PlannedBatch] = []
        too_big = demoted = 0
        while heads:
            _, qid = heapq.heappop(heads)
            qu = queues[qid]
            qs, used, late, n = qu.rows, qu.used, qu.late, len(qu.rows)
            t0, rep = tl.next()
            timer, budget, alone_s = timers[rep.index], budgets[rep.index], solo[rep.index]
            h = qu.head
            if not late:  # demote rows that cannot make it any more
                while h < n:
                    q = qs[h]
                    d = q.deadline_s
                    if d is None:
                        break
                    a = alone_s.get(q.index)
                    if a is None:
                        a = alone_s[q.index] = timer(1, q.prompt_tokens, q.predicted_tokens)
                    if t0 + a <= d:
                        break
                    used[h] = 1
                    late_rows[qid].append(q)
                    demoted += 1
                    qu.advance()
                    h = qu.head
                if h >= n:
                    self._retire(qid, queues, late_rows, heads)
                    continue
            q = qs[h]
            used[h] = 1
            members = [q]
            b, lm, um, pm, sp = 1, q.prompt_tokens, q.predicted_upper, q.predicted_tokens, q.predicted_tokens
            if kvpt * (lm + um) + lm * act_tok + act_row > budget:
                too_big += 1
            finish = t0 + timer(1, lm, pm)
            d = None if late else q.deadline_s
            min_meet = d if d is not None and finish <= d else INF
            other = tl.earliest_other(rep.index)
            j, seen, misses, patience = h + 1, 0, 0, self.patience
            while j < n and b < maxb and seen < window and misses < patience:
                if used[j]:
                    j += 1
                    continue
                q = qs[j]
                j += 1
                seen += 1
                misses += 1
                nb = b + 1
                nl = lm if lm >= q.prompt_tokens else q.prompt_tokens
                nu = um if um >= q.predicted_upper else q.predicted_upper
                if nb * (kvpt * (nl + nu) + nl * act_tok + act_row) > budget:
                    continue
                npm = pm if pm >= q.predicted_tokens else q.predicted_tokens
                nsp = sp + q.predicted_tokens
                d = None if late else q.deadline_s
                wasteful = npm > 0 and 1.0 - nsp / (nb * npm) > max_waste
                if wasteful and d is None:
                    continue
                if d is not None:
                    a = alone_s.get(q.index)  # q alone, if it waits for the next free replica
                    if a is None:
                        a = alone_s[q.index] = timer(1, q.prompt_tokens, q.predicted_tokens)
                    can_wait = (finish if finish < other else other) + a <= d
                    if wasteful and can_wait:
                        continue  # it can wait for a batch of its own length
                nf = t0 + timer(nb, nl, npm)
                guarded = t0 + (nf - t0) * stretch  # the finish the deadline tests use
                if guarded > min_meet:
                    continue
                if d is not None and guarded > d:
                    if wasteful or can_wait:
                        continue  # do not drag it late: it can still make it by waiting
                elif d is not None and d < min_meet:
                    min_meet = d
                used[j - 1] = 1
                misses = 0
                members.append(q)
                b, lm, um, pm, sp, finish = nb, nl, nu, npm, nsp, nf
            out.append(planned_batch(len(out), rep.index, members, t0, finish))
            tl.occupy(rep.index, finish)
            if qu.advance():
                heapq.heappush(heads, (self._key(qu), qid))
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
    def _key(qu: _Queue) -> tuple:
        q = qu.rows[qu.head]
        return (INF, INF, q.priority, q.predicted_tokens, q.index) if qu.late else edf_key(q)

    def _retire(self, qid: int, queues: list[_Queue], late_rows: list[list[Query]], heads: list) -> None:
        """A group's deadline queue is empty: its demoted rows become a late queue (SJF order)."""
        if qid >= len(late_rows) or not late_rows[qid]:
            return
        rows = sorted(late_rows[qid], key=lambda q: (q.priority, q.predicted_tokens, q.index))
        late_rows[qid] = []
        queues.append(_Queue(rows, late=True))
        late_rows.append([])
        heapq.heappush(heads, (self._key(queues[-1]), len(queues) - 1))


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
