"""The typed objects a job file turns into; every other module consumes these, not dicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROW_STATUSES = ("ok", "error", "rejected")


@dataclass(slots=True, frozen=True)
class Sampling:
    """Per-row decoding settings. Rows with different settings never share a batch."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def is_greedy(self) -> bool:
        return self.temperature <= 0.0

    def key(self) -> tuple:
        """Batching key: greedy rows all share one key whatever their top_p."""
        if self.is_greedy:
            return ("greedy", self.stop)
        return ("sample", self.temperature, self.top_p, self.seed, self.stop)


@dataclass(slots=True)
class Row:
    """One valid query of the job.

    index: 0-based position among all input rows (results are written in this order).
    line: 1-based line (JSONL/CSV/OpenAI) or row number (Parquet) in the file, for messages.
    deadline_s: seconds after the run starts; None when the row has no deadline.
    """

    index: int
    line: int
    id: str
    prompt: str | None
    messages: list[dict] | None
    deadline_s: float | None
    max_new_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    priority: int = 0
    passthrough: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    raw_prompt: bool = False  # a completion prompt (OpenAI /v1/completions): no chat template

    @property
    def text(self) -> str:
        """The prompt as plain text, what length predictors and the history see: `prompt`, or
        the contents of `messages` (the chat template is the tokenizer's business)."""
        return self.prompt if self.prompt is not None else messages_text(self.messages or [])


def messages_text(messages: list) -> str:
    """The contents of chat messages, one per line: the text of a `messages` row."""
    return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))


@dataclass(slots=True, frozen=True)
class RowError:
    """A row rejected before or failed during the run; written to errors.jsonl."""

    file: str
    line: int | None
    id: str | None
    field: str | None
    code: str
    reason: str
    index: int | None = None
    # the row's deadline when its own fields gave one (a row rejected for another field still
    # had a deadline, and counts as a miss against it)
    deadline_s: float | None = None

    def one_line(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        parts = [where]
        if self.id is not None:
            parts.append(f"id={self.id}")
        if self.field:
            parts.append(f"field={self.field}")
        return f"{' '.join(parts)}: {self.reason} [{self.code}]"

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "id": self.id,
            "field": self.field,
            "code": self.code,
            "reason": self.reason,
            "index": self.index,
        }


@dataclass(slots=True)
class Job:
    """A read and validated job file: the valid rows, and one error per rejected row.

    n_input counts every input row (valid + rejected), so results can cover all of them.
    fmt is one of: jsonl, parquet, csv, openai.
    """

    path: Path
    fmt: str
    rows: list[Row]
    errors: list[RowError]
    n_input: int
    file_sha256: str
    passthrough_columns: list[str] = field(default_factory=list)
