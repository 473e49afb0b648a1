"""What each vLLM engine step held, read from the in-process scheduler around `step()`.

Before a step we note every request's computed tokens; the scheduler's output says how many
the step computed for each (read as `schedule` returns it): one token for a decoding request, a
prompt chunk for a prefilling one (attention over everything before it, the blocks the prefix
cache served included: those count as computed, not as work of the step), and whether it
sampled (its computed tokens caught up).
These are the step-time model's inputs (plan/steptime.py); the run refits the model from them
(profile/run_calibration.record_steps) and `uellm profile --calibrate --engine vllm` fits it
from synthetic jobs. Only an in-process engine core is readable (a CPU instance here);
elsewhere `StepRecorder.of` returns None and nothing is recorded.
"""

from __future__ import annotations

from uellm_cli.jobs.results import StepRecord


class StepRecorder:
    """Snapshots the scheduler of one in-process vLLM engine, step by step."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.scheduled: dict[str, int] | None = None  # tokens the last step computed, by request
        schedule = getattr(scheduler.schedule, "__wrapped__", scheduler.schedule)

        def reading(*args, **kwargs):  # the scheduler's own method, its output noted
            out = schedule(*args, **kwargs)
            self.scheduled = getattr(out, "num_scheduled_tokens", None)
            return out

        reading.__wrapped__ = schedule  # a later recorder wraps the scheduler's own, not this
        scheduler.schedule = reading

    @classmethod
    def of(cls, llm_engine) -> StepRecorder | None:
        client = getattr(llm_engine, "engine_core", None)
        core = getattr(client, "engine_core", None)
        scheduler = getattr(core, "scheduler", None)
        if scheduler is None or not isinstance(getattr(scheduler, "requests", None), dict):
            return None
        return cls(scheduler)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """(computed tokens, tokens) of every request the scheduler holds."""
        self.scheduled = None
        return {rid: (r.num_computed_tokens, r.num_tokens) for rid, r in self.scheduler.requests.items()}

    def record(self, before: dict[str, tuple[int, int]], seconds: float, gap_s: float = 0.0
               ) -> tuple[StepRecord, set[str]]:
        """The step that ran since `before` (it took `seconds`, `gap_s` after the one before
        it ended), and the (vLLM) ids of the requests it worked on. A request gone from the
        scheduler finished in the step: it computed up to its tokens."""
        requests, scheduled = self.scheduler.requests, self.scheduled
        prefill_tokens = decode_rows = sampled = 0
        prefill_attention = decode_context = 0.0
        worked: set[str] = set()
        for rid, (computed, tokens) in before.items():
            req = requests.get(rid)
            after = req.num_computed_tokens if req is not None else tokens
            new = scheduled.get(rid, 0) if scheduled is not None else after - computed
            if new <= 0:
                continue
            worked.add(rid)
            start = after - new  # computed before the step's tokens, cached blocks included
            if new == 1 and start == tokens - 1:
                decode_rows += 1
                decode_context += start
            else:
                prefill_tokens += new
                prefill_attention += new * (2 * start + new)
            if after >= tokens:
                sampled += 1
        return StepRecord(prefill_tokens, prefill_attention, decode_rows, decode_context, sampled,
                          seconds, gap_s), worked
