"""One replica of the plan inside a Ray actor: load the model with its device map, run batches.

A plain class: the driver wraps it with `ray.remote` (this module never imports Ray, so it is
tested in-process too). The batch itself runs through the local `Executor`, so an actor splits
an out-of-memory batch and turns a failing batch into error rows exactly as one machine does.
Every node needs uellm installed, and the model either at the driver's path or resolvable
there under the same name (an alias converts once per node).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from uellm_cli.engine.executor import Executor
from uellm_cli.engine.loader import LoadOptions
from uellm_cli.engine.models import ResolvedModel
from uellm_cli.engine.rows import PreparedRow
from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.plan.types import PlannedBatch


@dataclass(slots=True, frozen=True)
class WorkerSpec:
    """What an actor needs to load its replica (pickled to the node)."""

    replica: int
    model: str  # --model as given (resolved again on a node without the driver's folder)
    resolved: ResolvedModel  # on the driver
    device_map: dict[str, str] | None
    load: LoadOptions  # threads: the actor's CPUs unless --threads says
    fail_fast: bool


class ReplicaWorker:
    """Loads at construction (Ray restarts an actor by constructing it again)."""

    def __init__(self, spec: WorkerSpec):
        from uellm_cli.engine.loader import hf_replica
        from uellm_cli.engine.models import load_tokenizer

        start = time.perf_counter()
        self.spec = spec
        resolved = _resolve_here(spec)
        tokenizer = load_tokenizer(resolved, trust_remote_code=spec.load.trust_remote_code)
        engine = hf_replica(resolved, tokenizer, spec.device_map, spec.load)
        self.epoch0 = 0.0
        self.executor = Executor({spec.replica: engine}, clock=self._clock, fail_fast=spec.fail_fast)
        self.load_s = time.perf_counter() - start

    def ready(self) -> dict:
        """Where this replica runs and how long it took to load."""
        return {"replica": self.spec.replica, "host": socket.gethostname(), "pid": os.getpid(),
                "load_s": self.load_s}

    def run_batch(self, planned: PlannedBatch, members: list[PreparedRow],
                  epoch0: float) -> tuple[list[RowResult], BatchRecord]:
        """Run one batch. `epoch0`: the run clock's zero as wall time (time.time()), so the
        times it reports are on the driver's run clock (within the nodes' clock skew)."""
        self.epoch0 = epoch0
        return self.executor.run_one(self.spec.replica, planned, members)

    def _clock(self) -> float:
        return time.time() - self.epoch0


def _resolve_here(spec: WorkerSpec):
    """The driver's model folder when this node sees it, else the model resolved here by name;
    a folder whose files differ from the driver's is refused (outputs would differ)."""
    from uellm_cli.engine.models import resolve_model
    from uellm_cli.errors import ModelNotFoundError

    driver = spec.resolved
    if driver.path.exists():
        return driver
    resolved = resolve_model(spec.model)
    if resolved.revision != driver.revision:
        raise ModelNotFoundError(
            f"{spec.model} on {socket.gethostname()} is revision {resolved.revision}, the driver's "
            f"is {driver.revision}: put the same model files on every node"
        )
    return resolved
