"""The engine interface the executors talk to, and the data that crosses it.

Two ways to run rows, one per kind of engine:
- a batch engine (`hf`) runs one static batch at a time: `generate(prompts, ...)` returns when
  every row of the batch is done; `executor.Executor` follows the plan's batches exactly.
- a stream engine (`vllm`) takes every request at once, in a given order (`priority`, lower
  first), batches them itself step by step (continuous batching), and reports each request
  as it finishes, with its own start and finish time and token count
  (`stream_executor.run_stream`).
Both tokenise with the same `encode(row)`, so they see identical prompt tokens, and both count
output tokens the same way (up to and including EOS). Loading a deployment (one engine per
replica of the plan) is `engine/loader.py`'s.

No torch here: this module is imported by the executors and the run before any engine loads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from uellm_cli.jobs.results import BatchRecord, RowResult, StepRecord
from uellm_cli.jobs.schema import Row, Sampling

if TYPE_CHECKING:
    from uellm_cli.plan.types import Plan


@dataclass(slots=True)
class Generated:
    """One row's generation: text, real output tokens (EOS included), and why it stopped."""

    text: str
    output_tokens: int
    finish_reason: str  # "stop" | "length"


@dataclass(slots=True)
class BatchOutput:
    generated: list[Generated]
    steps: int  # decode steps run = width of the generated block
    prompt_width: int


@runtime_checkable
class Encoder(Protocol):
    """Turns a row into prompt token ids (chat template where it applies)."""

    def encode(self, row: Row) -> list[int]: ...


@runtime_checkable
class BatchEngine(Protocol):
    """Runs one static batch; every row shares `sampling` (the scheduler guarantees it)."""

    name: str

    def encode(self, row: Row) -> list[int]: ...

    def generate(
        self, prompts: list[list[int]], *, max_new_tokens: list[int], sampling: Sampling
    ) -> BatchOutput: ...


@dataclass(slots=True, frozen=True)
class StreamRequest:
    """One row for a stream engine. priority: its rank in the plan's order (lower runs first)."""

    index: int
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: Sampling
    priority: int


@dataclass(slots=True)
class StreamResult:
    """What a stream engine reports for one request when it ends. Times are on the run clock:
    started_s = the start of the engine step that first worked on it (its prefill), finished_s =
    the end of the step that produced its last token. `generated` is None when it failed."""

    index: int
    generated: Generated | None
    started_s: float
    finished_s: float
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.generated is not None


@dataclass(slots=True)
class StreamStats:
    """How a stream went: engine steps run, and the exception that broke the engine, if any
    (its unfinished requests were reported as errors before it returns)."""

    steps: int = 0
    failure: BaseException | None = None
    stopped: bool = False  # the stop flag ended it early; unfinished requests were aborted
    step_log: list[StepRecord] = field(default_factory=list)  # each step, where it is readable


StepCallback = Callable[[list[StreamResult]], None]


@runtime_checkable
class StreamEngine(Protocol):
    """Runs requests with continuous batching in priority order. `on_step` is called after
    every engine step with the requests that ended in it (often none), so the caller can write
    results durably while the stream goes on. When `stop` is set, unfinished requests are
    aborted after the current step and not reported. `in_flight(rank)`: at most that many
    requests given to the engine at once while the next to give has that rank (None: all)."""

    name: str

    def encode(self, row: Row) -> list[int]: ...

    def run_stream(
        self,
        requests: Sequence[StreamRequest],
        *,
        clock: Callable[[], float],
        on_step: StepCallback,
        stop: threading.Event | None = None,
        in_flight: Callable[[int], int] | None = None,
    ) -> StreamStats: ...


def is_stream_engine(engine: object) -> bool:
    return callable(getattr(engine, "run_stream", None))


# What an executor hands back as batches end: the rows' results and the batch's record.
BatchCallback = Callable[[list[RowResult], BatchRecord], None]
# Given the rows still pending and the batch that just ended, a new plan for them (or None to
# keep the current one). Stream engines also pass `progress=`: the tokens each running row has
# generated so far.
Replanner = Callable[..., "Plan | None"]


class ExecutionState(Protocol):
    """What both executors share while a plan runs: the engines by replica, the run clock, the
    stop flag (SIGINT, --fail-fast), and the lock every write of results goes through."""

    engines: dict[int, object]
    clock: Callable[[], float]
    stop: threading.Event
    fail_fast: bool
    lock: threading.Lock
    step_log: list[StepRecord]  # the engine steps of stream engines, where they are readable
