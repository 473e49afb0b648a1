"""The Plan and what it is made of. Pure data: produced by plan/, consumed by engine/ and report/."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class Query:
    """A profiled row, all the scheduler looks at.

    index: the row's position in the input (Row.index), the key everywhere downstream.
    group: the row's Sampling.key(); rows with different groups never share a batch.
    predicted_tokens: the length the row most likely needs (orders rows, judges deadlines);
    expected_tokens: its mean, where lengths add up into the job's time (None: the same).
    shared_prefix: leading prompt tokens another row of the job starts with too, which vLLM's
    prefix cache computes once (plan/prefixes.py).
    """

    index: int
    id: str
    prompt_tokens: int
    max_new_tokens: int
    predicted_tokens: int
    predicted_upper: int
    deadline_s: float | None
    priority: int = 0
    group: tuple = ("greedy", ())
    expected_tokens: int | None = None
    shared_prefix: int = 0


@dataclass(slots=True, frozen=True)
class Stage:
    """A contiguous block of decoder layers [first, last) on one device of a replica, or on a
    tensor-parallel group of devices (`tp_group`, `device` first): every layer split over all
    of them (vLLM's tensor_parallel_size), each holding 1/tp of the weights and KV heads.
    weight_bytes is the whole stage's."""

    device: str
    first_layer: int
    last_layer: int
    has_embed: bool
    has_head: bool
    weight_bytes: int
    kv_reserve_bytes: int = 0
    tp_group: tuple[str, ...] = ()

    @property
    def num_layers(self) -> int:
        return self.last_layer - self.first_layer

    @property
    def tp(self) -> int:
        return len(self.tp_group) or 1

    @property
    def devices(self) -> tuple[str, ...]:
        return self.tp_group or (self.device,)


@dataclass(slots=True, frozen=True)
class Replica:
    """One copy of the model: its stages in pipeline order and the accelerate device_map."""

    index: int
    stages: tuple[Stage, ...]
    device_map: dict[str, str]
    kv_budget_bytes: int  # memory left for KV + activations on the tightest stage, scaled to the model

    @property
    def devices(self) -> tuple[str, ...]:
        """Every device of the replica, stage by stage (a tensor-parallel stage gives all of
        its group's)."""
        return tuple(d for s in self.stages for d in s.devices)

    @property
    def tp(self) -> int:
        """The tensor-parallel degree (1: none); every stage of a replica has the same."""
        return self.stages[0].tp if self.stages else 1


@dataclass(slots=True)
class Deployment:
    """Replicas of the model over the cluster, as chosen by a deployer strategy/objective."""

    strategy: str  # "helr-lr" | "helr-he" | "helr-helr" | "auto" | "balanced" | "sequential" | "single"
    replicas: list[Replica]
    note: str = ""


@dataclass(slots=True)
class PlannedBatch:
    """A static batch on one replica, with its forecast start and finish (seconds on the run clock)."""

    batch: int  # global batch number, in the order the executor should start them
    replica: int
    rows: list[int]  # Query.index values
    max_new_tokens: int  # generation budget of the batch = max of its members'
    start_s: float
    finish_s: float
    padding_waste: float = 0.0  # forecast share of token steps spent on padding/finished rows


@dataclass(slots=True, frozen=True)
class StreamLimits:
    """The scheduler settings of one vLLM instance, as the plan starts it (plan/continuous.py
    simulates them; engine/vllm_settings.py starts vLLM with them)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_bytes: int
    kv_blocks: int
    block_size: int
    max_model_len: int
    watermark_blocks: int = 0
    # Held back by us (the engine is fed by hand): the first `early_rows` rows of the plan's
    # order run at most `early_cap` at once, the rest up to max_num_seqs.
    early_cap: int | None = None
    early_rows: int = 0
    # Rows from this rank on (the plan's demoted rows) are given to the engine only once at most
    # `held_release` of the rows ranked before them are left unfinished: run beside those, they
    # would take slots and step time from rows that can still meet their deadlines; let in as
    # the last few run, they keep the engine full (None: no row is held).
    held_from: int | None = None
    held_release: int = 0

    def in_flight(self, rank: int, unfinished_before_held: int) -> int:
        """How many rows may be in the engine at once while the next one to give it has
        `rank`, with `unfinished_before_held` of the rows ranked before held_from unfinished:
        the one rule the executor feeds vLLM by and the simulator mirrors."""
        if self.held_from is not None and rank >= self.held_from and unfinished_before_held > self.held_release:
            return 0
        return self.cap(rank)

    def cap(self, rank: int) -> int:
        """Rows in the engine at once while the next one to give it has `rank`, rows held
        aside: the early cap for the first early_rows, max_num_seqs after."""
        return self.early_cap if self.early_cap and rank < self.early_rows else self.max_num_seqs


@dataclass(slots=True, frozen=True)
class RowForecast:
    index: int
    replica: int
    batch: int
    start_s: float
    finish_s: float
    deadline_s: float | None

    @property
    def slo_met(self) -> bool | None:
        if self.deadline_s is None:
            return None
        return self.finish_s <= self.deadline_s


@dataclass(slots=True)
class Plan:
    """Deployment + batch timeline + a forecast per row. `start_offset_s` is when the first batch
    is expected to start on the run clock (model loading comes first)."""

    policy: str
    deployment: Deployment
    batches: list[PlannedBatch]
    forecast: dict[int, RowForecast]
    start_offset_s: float = 0.0
    engine: str = "hf"  # the engine it is a plan for (its cost model and start-up)
    alternatives: list[dict] = field(default_factory=list)  # other deployments with their forecast
    notes: list[str] = field(default_factory=list)
    # Rows not run under --on-miss skip (their RowForecast stays in `forecast`, replica/batch -1).
    skipped: list[int] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # simulate.ForecastMetrics.to_dict() of this plan
    # Continuous batching (engine vllm): each replica's engine limits the forecast simulated.
    stream: dict[int, StreamLimits] = field(default_factory=dict)
    cost_model: dict = field(default_factory=dict)  # CostModel.describe(): roofline or calibration
