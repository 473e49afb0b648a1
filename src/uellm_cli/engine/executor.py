"""Run a Plan's batches on the engines of its replicas, one worker thread per replica.

The loop reads like nano-vllm's step: next batch -> run it -> record. Row failures never
escape: an out-of-memory batch is split in half and retried down to one row (a single row
that still does not fit is an `oom` error); any other exception marks the batch's rows
`error` and the job goes on (unless fail_fast). Results go to `on_batch` as each batch ends,
so the caller can append them durably before the next batch starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from uellm_cli.engine.base import BatchCallback, BatchEngine, Replanner
from uellm_cli.engine.rows import PreparedRow, error_result, ok_result, short_error
from uellm_cli.jobs.results import BatchRecord, RowResult, StepRecord
from uellm_cli.plan.types import Plan, PlannedBatch


class Executor:
    """Runs planned batches (ExecutionState in engine/base.py). `clock()` returns seconds on
    the run clock. `run` follows static batches; `run_stream` feeds stream engines."""

    def __init__(
        self,
        engines: dict[int, BatchEngine],
        *,
        clock: Callable[[], float],
        stop: threading.Event | None = None,
        fail_fast: bool = False,
    ):
        self.engines = engines
        self.clock = clock
        self.stop = stop or threading.Event()
        self.fail_fast = fail_fast
        self.lock = threading.Lock()
        self.step_log: list[StepRecord] = []
        self._failure: BaseException | None = None

    def run(self, plan: Plan, rows: dict[int, PreparedRow], on_batch: BatchCallback,
            replan: Replanner | None = None) -> None:
        """Run every batch whose rows are in `rows`, each replica's batches in plan order.

        With one replica and a `replan` callback, the plan is revised after every batch (the
        measured speed feeds the next decisions); several replicas follow the plan as made."""
        if replan is not None and len(plan.deployment.replicas) == 1:
            self._run_adaptive(plan, rows, on_batch, replan)
            return
        per_replica: dict[int, list[PlannedBatch]] = {}
        for b in sorted(plan.batches, key=lambda b: (b.start_s, b.batch)):
            members = [i for i in b.rows if i in rows]
            if members:
                per_replica.setdefault(b.replica, []).append(b)
        if len(per_replica) <= 1:
            for replica, batches in per_replica.items():
                self._run_replica(replica, batches, rows, on_batch)
        else:
            threads = [
                threading.Thread(
                    target=self._run_replica, args=(r, bs, rows, on_batch),
                    name=f"uellm-replica-{r}", daemon=True,
                )
                for r, bs in per_replica.items()
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if self._failure is not None:
            raise self._failure

    def run_stream(self, plan: Plan, rows: dict[int, PreparedRow], on_batch: BatchCallback,
                   replan: Replanner | None = None) -> None:
        """Queue every row on the replicas' stream engines (vLLM) with priority = its rank in
        the plan's order; results reach `on_batch` in small groups as rows finish (and, with
        `replan`, rows not started yet are re-ordered by the revised plan)."""
        from uellm_cli.engine.stream_executor import run_stream

        run_stream(self, plan, rows, on_batch, replan)

    def _run_adaptive(self, plan: Plan, rows, on_batch, replan: Replanner) -> None:
        replica = plan.deployment.replicas[0].index
        engine = self.engines[replica]
        pending = {i for b in plan.batches for i in b.rows if i in rows}
        while pending and not self.stop.is_set():
            planned = min((b for b in plan.batches if any(i in pending for i in b.rows)),
                          key=lambda b: (b.start_s, b.batch))
            members = [rows[i] for i in planned.rows if i in pending]
            results, record = self._run_batch(engine, replica, planned, members)
            on_batch(results, record)
            pending.difference_update(m.row.index for m in members)
            if pending and not self.stop.is_set():
                plan = replan(pending, record) or plan

    def run_one(self, replica: int, planned: PlannedBatch,
                members: list[PreparedRow]) -> tuple[list[RowResult], BatchRecord]:
        """Run one batch on `replica`'s engine now (the Ray backend's actors call this)."""
        return self._run_batch(self.engines[replica], replica, planned, members)

    def _run_replica(self, replica: int, batches: list[PlannedBatch], rows, on_batch) -> None:
        engine = self.engines[replica]
        for planned in batches:
            if self.stop.is_set() or self._failure is not None:
                return
            members = [rows[i] for i in planned.rows if i in rows]
            try:
                results, record = self._run_batch(engine, replica, planned, members)
            except BaseException as exc:  # fail_fast, or a bug: stop every replica
                self._failure = exc
                self.stop.set()
                return
            with self.lock:
                on_batch(results, record)

    def _run_batch(self, engine, replica: int, planned: PlannedBatch, members: list[PreparedRow]):
        start = self.clock()
        results: list[RowResult] = []
        steps, width, status = self._generate_splitting(engine, replica, planned, members, results)
        end = self.clock()
        record = BatchRecord(
            batch=planned.batch,
            replica=replica,
            rows=[m.row.index for m in members],
            started_s=start,
            finished_s=end,
            steps=steps,
            prompt_width=width,
            output_tokens=sum(r.output_tokens or 0 for r in results if r.status == "ok"),
            forecast_start_s=planned.start_s,
            forecast_finish_s=planned.finish_s,
            status=status,
        )
        return results, record

    def _generate_splitting(self, engine, replica, planned, members, results) -> tuple[int, int, str]:
        """Generate `members`; on OOM split in half and retry. Appends to `results`."""
        start = self.clock()
        try:
            out = engine.generate(
                [m.prompt_ids for m in members],
                max_new_tokens=[m.row.max_new_tokens for m in members],
                sampling=members[0].row.sampling,
            )
        except Exception as exc:  # noqa: BLE001 - classified below; row failures never escape
            if is_out_of_memory(exc):
                if len(members) == 1:
                    results.append(self._error(members[0], replica, planned, start, "oom",
                                               f"out of memory even alone: {short_error(exc)}"))
                    return 0, len(members[0].prompt_ids), "error"
                _free_memory()
                half = len(members) // 2
                s1, w1, _ = self._generate_splitting(engine, replica, planned, members[:half], results)
                s2, w2, _ = self._generate_splitting(engine, replica, planned, members[half:], results)
                return s1 + s2, max(w1, w2), "oom_split"
            if self.fail_fast:
                raise
            for m in members:
                results.append(self._error(m, replica, planned, start, "engine_error", short_error(exc)))
            return 0, max(len(m.prompt_ids) for m in members), "error"
        end = self.clock()
        for m, g in zip(members, out.generated, strict=False):
            results.append(ok_result(m, g, replica=replica, batch=planned.batch, started_s=start,
                                     finished_s=end))
        return out.steps, out.prompt_width, "ok"

    def _error(self, m: PreparedRow, replica, planned, start, code, message) -> RowResult:
        return error_result(m, replica, planned.batch, start, self.clock(), code, message)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, or a CPU allocation failure (torch raises RuntimeError / MemoryError)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    if name in ("OutOfMemoryError", "OutOfMemoryError_"):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg or "failed to allocate" in msg
    )


def _free_memory() -> None:
    """Give back cached accelerator memory before retrying smaller halves."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
    time.sleep(0)
