"""HELR: contiguous layer blocks over ordered device subsets, and replicas on disjoint devices.

A placement of one replica is an ordered list of devices and a number of decoder layers on
each (>= 1, contiguous, in order); the embeddings go with the first block, the final norm and
lm_head with the last. With tied embeddings the lm_head goes to the FIRST device: its weight is
the embedding matrix, one tensor, which accelerate cannot split over two devices (its hooks move
activations, never weights), so the head's matmul runs next to the embeddings and the last
hidden state hops back. That map loads with accelerate as it is.

Per-token time of a placement (CostModel, one decode step at a reference batch and context):
    T = sum_i k_i * t_layer(d_i) + t_embed(first) + t_head(first if tied else last)
        + sum_hops (latency + activation bytes / bandwidth) [+ hop last->first when tied]
Memory of device d_i: k_i * (layer bytes + KV reserve per layer) + embed bytes (first)
        + head bytes (last) + activation reserve <= mem_fraction * memory_bytes.

T splits into a part that depends on the order (the hops: a path through the subset) and a
part that depends only on the layer counts given which device is first and which is last. So:
1. Held-Karp over (subset bitmask, first device, last device): the cheapest Hamiltonian path
   through the subset, O(2^n * n^3) additions (about 14k for n = 8).
2. For every subset S and (first, last) pair: the cheapest layer counts. The cost is linear in
   the counts with box constraints 1 <= k_i <= cap_i(first, last) and sum k_i = L, so filling
   the fastest devices first is optimal (a fractional knapsack with integral caps): O(|S|).
Total O(2^n * n^3) for n devices; n = 8 with 80 layers runs in a few tens of milliseconds.
Each node is searched on its own (a replica never spans machines), cut to its MAX_EXHAUSTIVE
fastest devices (see `_groups`).

Objectives: `lr` = least per-token time over all subsets; `he` = fewest devices, then least
time. Replicas: pick the best placement, remove its devices, repeat on what is left; the k-th
candidate deployment uses the first k of them. `helr` is chosen in plan/planner.py by simulating
the scheduler on every candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from uellm_cli.errors import DoesNotFitError
from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.replicas import MEM_FRACTION, make_replica, usable_bytes
from uellm_cli.plan.types import Deployment, Replica
from uellm_cli.profile.devices import Cluster
from uellm_cli.profile.model_profile import ModelProfile

MAX_EXHAUSTIVE = 10  # devices searched exhaustively together
OBJECTIVES = ("lr", "he")
INF = float("inf")


@dataclass(slots=True, frozen=True)
class Placement:
    """One replica's devices in pipeline order and the decoder layers on each."""

    devices: tuple[str, ...]
    layers: tuple[int, ...]
    per_token_s: float


class PlacementSearch:
    """Best placement of one replica on every device subset (see the module docstring).

    kv_reserve_bytes: KV the batch plan needs for the whole model (split by layers);
    act_reserve_bytes: activation peak kept free on every device;
    ref_batch / ref_context: the decode step the per-token time is measured at.
    """

    def __init__(self, model: ModelProfile, cluster: Cluster, cost: CostModel | None = None, *,
                 kv_reserve_bytes: int = 0, act_reserve_bytes: int = 0, ref_batch: int = 1,
                 ref_context: int = 512, mem_fraction: float = MEM_FRACTION):
        self.model, self.cluster = model, cluster
        self.cost = cost or CostModel(model, cluster)
        self.kv_reserve = int(kv_reserve_bytes)
        self.act_reserve = int(act_reserve_bytes)
        self.ref_batch, self.ref_context = max(1, ref_batch), max(1, ref_context)
        self.mem_fraction = mem_fraction
        self.ids = [d.id for d in cluster.devices]
        self._best: dict[frozenset[str], Placement | None] = {}
        for group in _groups(cluster):
            self._search(group)

    # --------------------------------------------------------------- search

    def _caps(self, i: str) -> tuple[int, int, int, int]:
        """Layers that fit on device i as (middle, first, last, only) stage."""
        m = self.model
        per_layer = m.layer_bytes + self.kv_reserve / max(1, m.num_layers)
        room = usable_bytes(self.cluster.device(i).memory_bytes, self.mem_fraction) - self.act_reserve

        def cap(extra: int) -> int:
            free = room - extra
            return int(free // per_layer) if free >= 0 and per_layer > 0 else (m.num_layers if free >= 0 else -1)

        return (cap(0), cap(m.embed_bytes), cap(m.head_bytes), cap(m.embed_bytes + m.head_bytes))

    def _search(self, devs: list[str]) -> None:
        n, L, m, c = len(devs), self.model.num_layers, self.model, self.cost
        b, ctx = self.ref_batch, self.ref_context
        tl = [c.layer_decode_s(d, b, ctx) for d in devs]
        emb = [c.embed_decode_s(d, b) for d in devs]
        head = [c.head_decode_s(d, b) for d in devs]
        hop = [[c.hop_s(x, y, b) for y in devs] for x in devs]
        caps = [self._caps(d) for d in devs]
        tied = m.tied_embeddings
        need = m.weight_bytes + self.kv_reserve
        usable = [usable_bytes(self.cluster.device(d).memory_bytes, self.mem_fraction) - self.act_reserve
                  for d in devs]
        size = 1 << n
        # hp[mask][f*n + z]: cheapest path from device f to device z visiting exactly `mask`.
        hp: list[list[float] | None] = [None] * size
        for f in range(n):
            row = [INF] * (n * n)
            row[f * n + f] = 0.0
            hp[1 << f] = row
        for mask in range(1, size):
            row = hp[mask]
            if row is None:
                continue
            members = [i for i in range(n) if mask >> i & 1]
            outside = [j for j in range(n) if not mask >> j & 1]
            for f in members:
                for z in members:
                    v = row[f * n + z]
                    if v == INF:
                        continue
                    hl = hop[z]
                    for j in outside:
                        nm = mask | (1 << j)
                        nrow = hp[nm]
                        if nrow is None:
                            nrow = hp[nm] = [INF] * (n * n)
                        w = v + hl[j]
                        if w < nrow[f * n + j]:
                            nrow[f * n + j] = w
        for mask in range(1, size):
            members = [i for i in range(n) if mask >> i & 1]
            key = frozenset(devs[i] for i in members)
            if sum(usable[i] for i in members) < need or len(members) > L:
                self._best[key] = None
                continue
            by_speed = sorted(members, key=lambda i: (tl[i], i))
            best: tuple[float, int, int, tuple[int, ...]] | None = None
            row = hp[mask]
            for f in members:
                for z in members:
                    if (f == z) != (len(members) == 1):
                        continue
                    alloc = _allocate(by_speed, caps, f, z, L)
                    if alloc is None:
                        continue
                    t = row[f * n + z] + emb[f] + head[f if tied else z]
                    if tied and f != z:
                        t += hop[z][f]
                    t += sum(alloc[i] * tl[i] for i in members)
                    if best is None or t < best[0] - 1e-15:
                        best = (t, f, z, tuple(alloc.get(i, 0) for i in range(n)))
            if best is None:
                self._best[key] = None
                continue
            t, f, z, alloc = best
            alloc = self._balance(members, list(alloc), tl, caps, usable, f, z)
            order = _backtrack(hp, hop, mask, f, z, n)
            self._best[key] = Placement(tuple(devs[i] for i in order), tuple(alloc[i] for i in order), t)

    def _balance(self, members, alloc, tl, caps, usable, f, z) -> list[int]:
        """Among devices of equal per-layer time, moving layers does not change the per-token
        time: spread them so the tightest device keeps the most room for KV (the replica's
        kv_budget is its tightest stage's), by greedy max-min on (free memory / layers)."""
        m = self.model
        groups: dict[float, list[int]] = {}
        for i in members:
            groups.setdefault(tl[i], []).append(i)
        for devs in groups.values():
            if len(devs) < 2:
                continue
            total = sum(alloc[i] for i in devs)
            fixed = {i: (m.embed_bytes if i == f else 0) + (m.head_bytes if i == z else 0) for i in devs}
            cap = {i: caps[i][3] if i == f == z else caps[i][1] if i == f else caps[i][2] if i == z else caps[i][0]
                   for i in devs}
            k = dict.fromkeys(devs, 1)

            def room(i: int, layers: int, fixed=fixed) -> float:
                return (usable[i] - fixed[i] - layers * m.layer_bytes) / layers

            for _ in range(total - len(devs)):
                i = max((i for i in devs if k[i] < cap[i]), key=lambda i: (room(i, k[i] + 1), -i))
                k[i] += 1
            for i in devs:
                alloc[i] = k[i]
        return alloc

    # --------------------------------------------------------------- queries

    def placements(self) -> dict[frozenset[str], Placement]:
        """Best placement per device subset, feasible subsets only."""
        return {k: v for k, v in self._best.items() if v is not None}

    def best(self, objective: str = "lr", exclude: Sequence[str] = ()) -> Placement | None:
        """The best placement on devices not in `exclude`: lr = fastest, he = fewest devices."""
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r}")
        ex = set(exclude)
        order = {d: i for i, d in enumerate(self.ids)}

        def key(p: Placement):
            tie = tuple(sorted(order[d] for d in p.devices))
            if objective == "he":
                return (len(p.devices), p.per_token_s, tie)
            return (p.per_token_s, len(p.devices), tie)

        cands = [p for s, p in self._best.items() if p is not None and not (s & ex)]
        return min(cands, key=key) if cands else None

    def replicas(self, objective: str = "lr", max_replicas: int | None = None) -> list[Placement]:
        """Disjoint placements, best first, until no device set is left that holds the model."""
        used: list[str] = []
        out: list[Placement] = []
        while max_replicas is None or len(out) < max_replicas:
            p = self.best(objective, used)
            if p is None:
                break
            out.append(p)
            used.extend(p.devices)
        return out

    def replica(self, index: int, p: Placement) -> Replica:
        return make_replica(index, self.model, self.cluster, p.devices, p.layers, self.kv_reserve, self.mem_fraction)

    def deployments(self, objective: str = "lr", max_replicas: int | None = None) -> list[Deployment]:
        """Candidate deployments with 1, 2, ... replicas (each a prefix of `replicas()`)."""
        ps = self.replicas(objective, max_replicas)
        reps = [self.replica(i, p) for i, p in enumerate(ps)]
        return [
            Deployment(f"helr-{objective}", reps[:r],
                       note=f"{r} replica(s), KV reserve {self.kv_reserve / 2**30:.2f} GiB per replica")
            for r in range(1, len(reps) + 1)
        ]

    def does_not_fit(self) -> DoesNotFitError:
        m = self.model
        need = m.weight_bytes + self.kv_reserve + self.act_reserve
        devs = self.cluster.devices
        largest = max((usable_bytes(d.memory_bytes, self.mem_fraction) for d in devs), default=0)
        total = sum(usable_bytes(d.memory_bytes, self.mem_fraction) for d in devs)
        return DoesNotFitError(
            f"{m.name} needs {_gb(need)} ({need} bytes: weights {_gb(m.weight_bytes)} + KV reserve "
            f"{_gb(self.kv_reserve)} + activations {_gb(self.act_reserve)}) but the largest device has "
            f"{_gb(largest)} ({largest} bytes) usable and all {len(devs)} device(s) together {_gb(total)}",
            hint="use a cluster with more memory (--cluster), a smaller dtype, or a smaller model",
        )


def deploy(model: ModelProfile, cluster: Cluster, cost: CostModel | None = None, *,
           objective: str = "lr", kv_reserve_bytes: int = 0, act_reserve_bytes: int = 0,
           ref_batch: int = 1, ref_context: int = 512, replicas: int | None = None,
           mem_fraction: float = MEM_FRACTION) -> Deployment:
    """HELR placement with as many replicas as fit (or `replicas`); DoesNotFitError if none."""
    search = PlacementSearch(model, cluster, cost, kv_reserve_bytes=kv_reserve_bytes,
                             act_reserve_bytes=act_reserve_bytes, ref_batch=ref_batch,
                             ref_context=ref_context, mem_fraction=mem_fraction)
    deps = search.deployments(objective, replicas)
    if not deps:
        raise search.does_not_fit()
    return deps[-1]


def _allocate(by_speed: list[int], caps, f: int, z: int, L: int) -> dict[int, int] | None:
    """Cheapest layer counts (fastest devices first), 1 <= k_i <= cap_i, sum = L."""
    alloc = {}
    room = 0
    for i in by_speed:
        mid, first, last, only = caps[i]
        cap = only if (i == f and i == z) else first if i == f else last if i == z else mid
        if cap < 1:
            return None
        alloc[i] = cap
        room += cap
    if room < L:
        return None
    left = L - len(by_speed)
    for i in by_speed:
        take = min(alloc[i] - 1, left)
        alloc[i] = 1 + take
        left -= take
    return alloc


def _backtrack(hp, hop, mask: int, f: int, z: int, n: int) -> list[int]:
    """Recover the device order of hp[mask][f -> z]."""
    order = [z]
    cur_mask, cur = mask, z
    while cur != f or cur_mask != (1 << f):
        prev_mask = cur_mask & ~(1 << cur)
        target = hp[cur_mask][f * n + cur]
        row = hp[prev_mask]
        nxt = None
        for j in range(n):
            if (prev_mask >> j & 1 and row is not None and row[f * n + j] != INF
                    and abs(row[f * n + j] + hop[j][cur] - target) <= 1e-12 * max(1.0, abs(target))):
                nxt = j
                break
        assert nxt is not None, "inconsistent Held-Karp table"
        order.append(nxt)
        cur_mask, cur = prev_mask, nxt
    return order[::-1]


def _groups(cluster: Cluster) -> list[list[str]]:
    """Device sets searched exhaustively: one per node (a replica never spans machines:
    accelerate's layer hooks cannot reach another host), each cut to its MAX_EXHAUSTIVE
    fastest devices."""
    nodes: dict[str, list] = {}
    for d in cluster.devices:
        nodes.setdefault(d.node, []).append(d)
    out = []
    for members in nodes.values():
        if len(members) > MAX_EXHAUSTIVE:
            members = sorted(members, key=lambda d: (-d.mem_bandwidth, -d.memory_bytes))[:MAX_EXHAUSTIVE]
        out.append([d.id for d in members])
    return out


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
