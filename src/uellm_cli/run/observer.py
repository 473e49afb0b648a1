"""What a run tells the command that started it: progress as it goes, an outcome at the end.

Nothing in run/ prints: the command supplies a RunObserver and renders the RunOutcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.plan.types import Plan
from uellm_cli.report.metrics import RunMetrics


class RunObserver:
    """Progress hooks; the default does nothing (library code never prints)."""

    def stage(self, message: str) -> None: ...

    def started(self, plan: Plan, rows_total: int, rows_skipped: int) -> None: ...

    def batch_done(self, results: list[RowResult], record: BatchRecord, at_risk: int) -> None: ...

    def interrupted(self, second: bool) -> None: ...


@dataclass(slots=True)
class RunOutcome:
    """How a run ended. metrics and the file paths are None for an interrupted run."""

    exit_code: int
    out_dir: Path
    metrics: RunMetrics | None = None
    state: str = "complete"  # "complete" | "interrupted"
    rows_total: int = 0
    rows_ok: int = 0
    rows_error: int = 0
    rows_rejected: int = 0
    report_html: Path | None = None
    results_path: Path | None = None
    notes: list[str] = field(default_factory=list)
