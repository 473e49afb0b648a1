"""One stream of requests through a vLLM engine, stepped by hand (what `LLM.generate` does
inside), so each row's start and finish are the steps that began and ended it.

Requests are given to vLLM in priority order, at most `in_flight(rank)` at once (rank: the
priority of the next one to give): holding rows back lets the plan run few at once while the
earliest deadlines run and many later (plan/continuous.py simulates the same rule). Rows not
given yet, or given but not started, can be re-ordered between steps (`reprioritize`). Each
step's contents and time are recorded (engine/vllm_steps.py) where the scheduler is readable.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from uellm_cli.engine.base import StepCallback, StreamRequest, StreamResult, StreamStats
from uellm_cli.engine.rows import short_error
from uellm_cli.engine.vllm_steps import StepRecorder


@dataclass(slots=True)
class Live:
    """A request vLLM holds: what it has generated so far, and when its first step began."""

    request: StreamRequest
    token_ids: list[int] = field(default_factory=list)
    started_s: float | None = None


class VLLMStream:
    """The state of one `VLLMEngine.run_stream` call (see the module docstring)."""

    def __init__(self, engine, requests: Sequence[StreamRequest], *, clock: Callable[[], float],
                 on_step: StepCallback, stop: threading.Event | None,
                 in_flight: Callable[[int], int] | None, tags: itertools.count):
        self.engine, self.llm_engine = engine, engine.llm.llm_engine
        self.pending = sorted(requests, key=lambda r: r.priority)  # not given to vLLM yet
        self.clock, self.on_step, self.stop, self.in_flight = clock, on_step, stop, in_flight
        self.live: dict[str, Live] = {}  # by our request id
        self.alias: dict[str, str] = {}  # vLLM's internal id (ours + a suffix) -> ours
        self.tags, self.tag = tags, next(tags)
        self.recorder = StepRecorder.of(self.llm_engine)
        self.stats = StreamStats()

    def run(self) -> StreamStats:
        try:
            self._feed()
            self._step_until_done()
        except BaseException:  # e.g. Ctrl-C inside on_step: leave the engine empty for reuse
            self._abort()
            raise
        return self.stats

    def _feed(self) -> None:
        """Give vLLM the next requests in order, up to in_flight(rank) held at once."""
        refused: list[StreamResult] = []
        while self.pending:
            req = self.pending[0]
            if self.in_flight is not None and len(self.live) >= max(1, self.in_flight(req.priority)):
                break
            self.pending.pop(0)
            try:
                self._add(req, f"uellm-{self.tag}-{req.index}")
            except Exception as exc:  # noqa: BLE001 - a refused request is that row's error
                now = self.clock()
                refused.append(StreamResult(req.index, None, now, now, "engine_error",
                                            short_error(exc)))
        if refused:
            self.on_step(refused)

    def _add(self, req: StreamRequest, rid: str) -> None:
        internal = self.llm_engine.add_request(rid, {"prompt_token_ids": list(req.prompt_ids)},
                                               self.engine._params(req), priority=int(req.priority))
        self.live[rid] = Live(req)
        self.alias[str(internal)] = rid

    def _step_until_done(self) -> None:
        engine, live = self.llm_engine, self.live
        last_end: float | None = None  # when the step before ended: the host's gap runs from it
        while (live or self.pending) and engine.has_unfinished_requests():
            if self.stop is not None and self.stop.is_set():
                self._abort()
                self.stats.stopped = True
                return
            before = self.clock()
            snapshot = self.recorder.snapshot() if self.recorder else None
            try:
                outputs = engine.step()
            except Exception as exc:  # noqa: BLE001 - the engine broke: its requests fail
                self._fail(exc, before)
                return
            now = self.clock()
            self.stats.steps += 1
            if snapshot is not None:
                gap_s = before - last_end if last_end is not None else 0.0
                record, worked = self.recorder.record(snapshot, now - before, gap_s)
                self.stats.step_log.append(record)
                for internal in worked:
                    state = live.get(self.alias.get(internal, internal))
                    if state is not None and state.started_s is None:
                        state.started_s = before
            last_end = now
            self.on_step(self._ended(outputs, before, now))
            self._feed()
        if (live or self.pending) and not self.stats.stopped:  # idle, yet requests are missing
            now = self.clock()
            missing = [s.request for s in live.values()] + self.pending
            self.on_step([StreamResult(r.index, None, now, now, "engine_error",
                                       "vLLM ended without finishing this request")
                          for r in missing])
            live.clear()
            self.pending.clear()

    def _ended(self, outputs, before: float, now: float) -> list[StreamResult]:
        ended: list[StreamResult] = []
        for out in outputs:
            rid = str(out.request_id)
            rid = rid if rid in self.live else self.alias.get(rid, rid)
            state = self.live.get(rid)
            if state is None:
                continue
            if state.started_s is None:
                state.started_s = before
            comp = out.outputs[0] if out.outputs else None
            if comp is not None:
                state.token_ids.extend(comp.token_ids)
            if out.finished:
                ended.append(self.engine._finish(state, comp, now))
                del self.live[rid]
        return ended

    def progress(self) -> dict[int, int]:
        """Tokens generated so far by each row vLLM has started."""
        return {s.request.index: len(s.token_ids) for s in self.live.values()
                if s.started_s is not None}

    def reprioritize(self, priorities: dict[int, int]) -> int:
        """New priorities for requests that have not started: those not given to vLLM are
        re-sorted; those given but not started are aborted and queued again with their new
        priority (vLLM has done no work on them). Running requests keep theirs. Returns how
        many requests moved."""
        waiting = [(rid, s) for rid, s in self.live.items()
                   if s.started_s is None and s.request.index in priorities]
        held = [r for r in self.pending if r.index in priorities]
        order = [s.request.index for _, s in sorted(waiting, key=lambda w: w[1].request.priority)]
        order += [r.index for r in held]
        if order == sorted(order, key=lambda i: priorities[i]):
            return 0  # same order: ranks shifting as rows finish is no reason to re-queue
        moved = 0
        self.pending = sorted((replace(r, priority=int(priorities.get(r.index, r.priority)))
                               for r in self.pending), key=lambda r: r.priority)
        moved += len(held)
        for rid, state in waiting:
            new = priorities[state.request.index]
            if new == state.request.priority:
                continue
            req = replace(state.request, priority=int(new))
            fresh = f"{rid.rsplit('~', 1)[0]}~{moved}-{next(self.tags)}"
            try:
                self._add(req, fresh)
            except Exception:  # noqa: BLE001 - keep the request as it was queued
                continue
            with contextlib.suppress(Exception):
                self.llm_engine.abort_request([rid])
            del self.live[rid]
            moved += 1
        return moved

    def _fail(self, exc: BaseException, before: float) -> None:
        now = self.clock()
        failed = [(s.request, s.started_s or before) for s in self.live.values()]
        failed += [(r, now) for r in self.pending]
        self._abort()
        self.on_step([StreamResult(r.index, None, start, now, "engine_error", short_error(exc))
                      for r, start in failed])
        self.stats.failure = exc

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self.llm_engine.abort_request(sorted(self.live))
        self.live.clear()
        self.pending.clear()
