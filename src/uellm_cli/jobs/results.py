"""RowResult and BatchRecord: what the executors emit, and what the writers, the report and
the history consume. A RowResult becomes a flat record (a dict) only to be written."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace


@dataclass(slots=True)
class RowResult:
    """One finished (or failed/rejected) row. Times are seconds on the run clock."""

    index: int
    id: str | None  # None: a rejected row that had no readable id
    status: str  # "ok" | "error" | "rejected"
    output_text: str | None = None
    finish_reason: str | None = None  # "stop" | "length"
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    predicted_output_tokens: int | None = None
    replica: int | None = None
    batch: int | None = None
    started_s: float | None = None
    finished_s: float | None = None
    latency_s: float | None = None
    deadline_s: float | None = None
    slo_met: bool | None = None
    error_code: str | None = None
    error_message: str | None = None
    warnings: list[str] = field(default_factory=list)
    passthrough: dict = field(default_factory=dict)

    def to_record(self) -> dict:
        """Flat dict for writers: passthrough columns sit beside the result fields."""
        d = asdict(self)
        extra = d.pop("passthrough")
        d["warnings"] = "; ".join(d["warnings"]) if d["warnings"] else None
        for k, v in extra.items():
            # an input column named like a result field keeps its value under input_<name>
            d["input_" + k if k in d or k == "index" else k] = v
        return d

    @classmethod
    def from_record(cls, rec: Mapping, index: int | None = None) -> RowResult:
        """The RowResult a record was made from (the result log, a results file): result
        fields by name, every other key but the log's attempt tag a passthrough column.
        `index` is used when the record has none (a results file row's position)."""
        known = {k: v for k, v in rec.items() if k in _FIELDS and k not in ("warnings", "passthrough")}
        if index is not None:
            known.setdefault("index", index)
        warnings = rec.get("warnings")
        return cls(
            **known,
            warnings=[w for w in warnings.split("; ") if w] if isinstance(warnings, str)
            else list(warnings or []),
            passthrough={k: v for k, v in rec.items() if k not in _FIELDS and k != ATTEMPT_KEY},
        )


RESULT_FIELDS = [
    "id", "status", "output_text", "finish_reason", "prompt_tokens", "output_tokens",
    "predicted_output_tokens", "replica", "batch", "started_s", "finished_s", "latency_s",
    "deadline_s", "slo_met", "error_code", "error_message", "warnings",
]


@dataclass(slots=True)
class BatchRecord:
    """What one executed batch did, for padding waste, the Gantt chart and forecast vs actual.

    steps: decode steps run (width of the generated block); rows * steps token slots were
    spent, of which sum(output_tokens) were real output, the rest padding/finished rows.
    """

    batch: int
    replica: int
    rows: list[int]
    started_s: float
    finished_s: float
    steps: int
    prompt_width: int
    output_tokens: int
    forecast_start_s: float | None = None
    forecast_finish_s: float | None = None
    status: str = "ok"  # "ok" | "error" | "oom_split" | EARLIER (rebuilt from an earlier attempt)


# The result log tags each record with the attempt that wrote it (an internal key: never a
# column). A resumed run's report lays the earlier attempts' batches before its own.
ATTEMPT_KEY = "_attempt"
EARLIER = "earlier attempt"


def earlier_batches(records: Iterable[Mapping], *, end_s: float | None = None) -> list[BatchRecord]:
    """The batches of earlier attempts, rebuilt from their rows' log records and laid end to
    end so the last ends at `end_s` (None: the first starts at 0), as each attempt had its own
    clock from 0: a resumed job's makespan is then the sum of its attempts' generation spans.
    Steps and padding are not in the log, so these batches hold no token slots (padding waste
    is the last attempt's)."""
    attempts: dict[object, dict[tuple[int, int], list[Mapping]]] = {}
    for rec in records:
        if rec.get("started_s") is None or rec.get("finished_s") is None:
            continue
        key = (int(rec.get("replica") or 0), int(rec.get("batch") if rec.get("batch") is not None else -1))
        attempts.setdefault(rec.get(ATTEMPT_KEY), {}).setdefault(key, []).append(rec)
    order = sorted(attempts, key=lambda a: (a is not None, a if isinstance(a, int) else 0))
    rebuilt: list[list[BatchRecord]] = []
    for attempt in order:
        rebuilt.append([
            BatchRecord(batch=batch, replica=replica, rows=[int(r["index"]) for r in rows],
                        started_s=min(float(r["started_s"]) for r in rows),
                        finished_s=max(float(r["finished_s"]) for r in rows),
                        steps=0, prompt_width=0, output_tokens=0, status=EARLIER)
            for (replica, batch), rows in sorted(attempts[attempt].items())])
    out: list[BatchRecord] = []
    spans = [max(b.finished_s for b in bs) - min(b.started_s for b in bs) for bs in rebuilt]
    t = sum(spans) if end_s is None else end_s
    for batches in reversed(rebuilt):  # the latest attempt ends where this one starts
        first = min(b.started_s for b in batches)
        last = max(b.finished_s for b in batches)
        shift = t - last
        out[:0] = [replace(b, started_s=b.started_s + shift, finished_s=b.finished_s + shift)
                   for b in batches]
        t -= last - first
    return out


_FIELDS = {f.name for f in fields(RowResult)}


@dataclass(slots=True, frozen=True)
class StepRecord:
    """What one continuous-batching engine step held, and how long it took (plan/steptime.py
    names the fields): refits the step-time model after a vLLM run. `gap_s`: the host's time
    between the previous step's end and this one's start (our rows written, the engine fed,
    plans revised), which the job's time pays as much as the steps."""

    prefill_tokens: int
    prefill_attention: float
    decode_rows: int
    decode_context: float
    sampled_rows: int
    seconds: float
    gap_s: float = 0.0
