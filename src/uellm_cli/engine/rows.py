"""A row on its way through an engine: PreparedRow in, RowResult out (ok or error), the same
for static batches, streams and Ray actors."""

from __future__ import annotations

from dataclasses import dataclass

from uellm_cli.engine.base import Generated
from uellm_cli.jobs.results import RowResult
from uellm_cli.jobs.schema import Row


@dataclass(slots=True)
class PreparedRow:
    """A row ready to run: its tokens and what the profiler predicted for it."""

    row: Row
    prompt_ids: list[int]
    predicted_tokens: int


def ok_result(m: PreparedRow, g: Generated, *, replica: int, batch: int | None, started_s: float,
              finished_s: float) -> RowResult:
    """A row that generated: its text, tokens and timing; SLO met = finished by its deadline."""
    deadline = m.row.deadline_s
    return RowResult(
        index=m.row.index, id=m.row.id, status="ok", output_text=g.text,
        finish_reason=g.finish_reason, prompt_tokens=len(m.prompt_ids),
        output_tokens=g.output_tokens, predicted_output_tokens=m.predicted_tokens,
        replica=replica, batch=batch, started_s=started_s, finished_s=finished_s,
        latency_s=finished_s, deadline_s=deadline,
        slo_met=None if deadline is None else finished_s <= deadline,
        warnings=list(m.row.warnings), passthrough=m.row.passthrough,
    )


def error_result(m: PreparedRow, replica: int, batch: int | None, start: float, end: float,
                 code: str, message: str | None) -> RowResult:
    """A row that ran (or was about to) and failed: an error row with its timing."""
    return RowResult(
        index=m.row.index, id=m.row.id, status="error", prompt_tokens=len(m.prompt_ids),
        predicted_output_tokens=m.predicted_tokens, replica=replica, batch=batch,
        started_s=start, finished_s=end, latency_s=end, deadline_s=m.row.deadline_s,
        slo_met=None if m.row.deadline_s is None else False,
        error_code=code, error_message=message, warnings=list(m.row.warnings),
        passthrough=m.row.passthrough,
    )


def short_error(exc: BaseException) -> str:
    """The first line of an exception, with its type, for an error row's message."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
