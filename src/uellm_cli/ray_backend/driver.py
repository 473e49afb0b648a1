"""The Ray side of a run: connect, read the cluster, start one actor per replica, run the plan.

The only module that imports Ray. The runner uses it as a context manager:

    with RayBackend(address) as ray_backend:
        ray_cluster = ray_backend.cluster(cpu, replicas=...)  # plan with ray_cluster.cluster
        ray_backend.start(spec_for, plan)                    # actors load the model
        ray_backend.run(plan, rows, on_batch, clock=..., stop=...)

On exit our actors are killed and, if this run called ray.init, ray.shutdown: that leaves a
cluster it joined running and stops a local Ray it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable

from uellm_cli.engine.base import BatchCallback
from uellm_cli.engine.rows import PreparedRow
from uellm_cli.errors import ConfigError, UellmError
from uellm_cli.plan.types import Plan, PlannedBatch, Replica
from uellm_cli.ray_backend import check_reachable, require_ray
from uellm_cli.ray_backend.cluster import (
    RayCluster,
    actor_placement,
    cluster_from_nodes,
    nodes_from_ray,
)
from uellm_cli.ray_backend.dispatch import DEAD, FAILED, LOST, OK, DispatchStats, dispatch
from uellm_cli.ray_backend.worker import ReplicaWorker, WorkerSpec

MAX_RESTARTS = 2  # per actor; a replica lost more often than this is dropped
READY_TIMEOUT_S = 1800.0  # loading a large model on a slow disk can take long; not forever
WAIT_SLICE_S = 0.5  # ray.wait in slices, so Ctrl-C is handled promptly
LOOPBACK = "127.0.0.1"  # where a local Ray that uellm starts listens


def loopback_only() -> None:
    """Make a Ray started by this process serve this machine only: every service (GCS, raylet,
    object manager, workers, agents) binds to 127.0.0.1. Ray has no authentication: anyone who
    reaches its ports can run code. Ray turns a node address of 127.0.0.1 into the machine's
    network address unless it runs in its single-machine mode (the one it uses on macOS and
    Windows), which RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 selects; child processes inherit it.
    If Ray is already imported, its constant is set too. A cluster the user points us to is
    theirs to secure (docs/ray.md)."""
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


class ReplicaStartError(UellmError):
    """No replica could be started on the Ray cluster."""

    code = "replica_start"


class RayBackend:
    """One run's use of Ray (see the module docstring)."""

    def __init__(self, address: str | None = None, *, max_restarts: int = MAX_RESTARTS):
        require_ray()
        self.address = address
        self.max_restarts = max_restarts
        self.started_here = False  # ray.init was called here (else: a caller's connection)
        self.actors: dict[int, object] = {}
        self.ray_cluster: RayCluster | None = None  # as cluster() last read it
        self.notes: list[str] = []
        self.tag = uuid.uuid4().hex[:8]  # actor names: uellm-<tag>-replica-<i>

    def __enter__(self) -> RayBackend:
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            loopback_only()  # before Ray reads its constants
        import ray

        if not ray.is_initialized():
            check_reachable(self.address)
            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
            local = {} if self.address else {"_node_ip_address": LOOPBACK}
            try:
                ray.init(address=self.address, logging_level=logging.ERROR,
                         log_to_driver=False, include_dashboard=False, **local)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot connect to Ray at {self.address}: {exc}".splitlines()[0],
                                  hint="start it with `ray start --head`, or drop --ray-address to "
                                       "start a local Ray") from exc
            self.started_here = True
        return self

    def __exit__(self, *exc) -> None:
        import ray

        for actor in self.actors.values():
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)
        self.actors.clear()
        if self.started_here:
            ray.shutdown()

    def cluster(self, cpu, *, replicas: int | None = None) -> RayCluster:
        """The cluster Ray sees now; `cpu` (this machine's) is the template for CPU nodes."""
        import ray

        self.ray_cluster = cluster_from_nodes(nodes_from_ray(ray.nodes()), cpu, replicas=replicas,
                                              address=self.address)
        return self.ray_cluster

    def start(self, spec_for: Callable[[Replica, object], WorkerSpec], plan: Plan) -> None:
        """One actor per replica of a plan made for `cluster()`'s cluster, pinned to its node;
        returns when all are loaded. A replica that fails to load is dropped (noted); none at
        all is ReplicaStartError."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray_cluster = self.ray_cluster
        if ray_cluster is None:
            raise RuntimeError("RayBackend.start needs the cluster() the plan was made for")

        start = time.perf_counter()
        remote = ray.remote(ReplicaWorker)
        ready = {}
        for replica in plan.deployment.replicas:
            place = actor_placement(replica, ray_cluster)
            actor = remote.options(
                name=f"uellm-{self.tag}-replica-{replica.index}",
                num_cpus=place.num_cpus, num_gpus=place.num_gpus,
                scheduling_strategy=NodeAffinitySchedulingStrategy(place.node_id, soft=False),
                max_restarts=self.max_restarts, max_task_retries=0,
            ).remote(spec_for(replica, place))
            self.actors[replica.index] = actor
            ready[actor.ready.remote()] = replica.index
        failures: dict[int, str] = {}
        pending = list(ready)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=_left(start))
            if not done:
                for ref in pending:
                    failures[ready[ref]] = f"not placed or loaded within {READY_TIMEOUT_S:.0f}s"
                break
            try:
                ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - the actor's load error, shown below
                failures[ready[done[0]]] = _cause(exc)
        for index, reason in sorted(failures.items()):
            actor = self.actors.pop(index)
            ray.kill(actor, no_restart=True)
            self.notes.append(f"replica {index} did not start: {reason}")
        if not self.actors:
            first = next(iter(sorted(failures.items())))[1]
            raise ReplicaStartError(f"no replica started on the Ray cluster: {first}")

    def run(self, plan: Plan, rows: dict[int, PreparedRow], on_batch: BatchCallback, *,
            clock: Callable[[], float], stop: threading.Event, fail_fast: bool = False) -> DispatchStats:
        """Run the plan on the started actors (replicas pull batches; see dispatch.py)."""
        pool = RayPool(self.actors, epoch0=time.time() - clock(), max_restarts=self.max_restarts)
        stats = dispatch(pool, plan, rows, on_batch, clock=clock, stop=stop, fail_fast=fail_fast)
        if stats.lost:
            self.notes.append(
                f"{stats.lost} batch(es) lost with their replica and run again elsewhere"
                + (f"; {stats.replicas_lost} replica(s) dropped" if stats.replicas_lost else "")
                + (f"; {stats.given_up} given up as errors" if stats.given_up else ""))
        return stats


class RayPool:
    """`dispatch.ReplicaPool` on Ray actors. A replica lost more than `max_restarts` times is
    gone (Ray does not restart it again)."""

    def __init__(self, actors: dict[int, object], *, epoch0: float, max_restarts: int):
        self.actors = actors
        self.live = set(actors)
        self.epoch0 = epoch0
        self.max_restarts = max_restarts
        self.losses = dict.fromkeys(actors, 0)
        self._replica_of: dict[object, int] = {}

    def submit(self, replica: int, planned: PlannedBatch, members: list[PreparedRow]) -> object:
        ref = self.actors[replica].run_batch.remote(planned, members, self.epoch0)
        self._replica_of[ref] = replica
        return ref

    def wait(self, handles: list[object]) -> tuple[object, str, object]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        while True:
            done, _ = ray.wait(handles, num_returns=1, timeout=WAIT_SLICE_S)
            if done:
                break
        ref = done[0]
        replica = self._replica_of.pop(ref)
        try:
            return ref, OK, ray.get(ref)
        except RayActorError as exc:  # ActorDiedError, ActorUnavailableError (restarting)
            # Counted rather than read from the exception type: whether Ray restarts an actor
            # shows only in the next call, and a dead one fails that call at once.
            self.losses[replica] += 1
            return ref, DEAD if self.losses[replica] > self.max_restarts else LOST, exc
        except RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            return ref, FAILED, cause


def _left(start: float) -> float:
    return max(0.0, READY_TIMEOUT_S - (time.perf_counter() - start))


def _cause(exc: BaseException) -> str:
    """The first line of what went wrong inside an actor (Ray wraps it in several layers)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ", "ray::", "The actor died")):
            return line[:300]
    return type(cause).__name__
