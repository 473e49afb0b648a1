"""read_job: any job file (JSONL, OpenAI batch, CSV, Parquet) to one validated Job.

Whole-file problems raise InputError before any work; a bad row becomes a RowError in
Job.errors and the rest of the job goes on. Every input row gets an index, valid or not, so
results can be written for every row in input order.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from uellm_cli.errors import ConfigError, InputError
from uellm_cli.jobs import formats
from uellm_cli.jobs.fields import RowProblem, json_why, show
from uellm_cli.jobs.openai_batch import openai_raw_row
from uellm_cli.jobs.schema import Job, Row
from uellm_cli.jobs.tabular import csv_rows, parquet_rows
from uellm_cli.jobs.validate import RawRow, RowValidator

_JSON_KINDS = ("jsonl", "openai")


def read_job(
    path: str | Path,
    *,
    fmt: str | None = None,
    default_max_new_tokens: int = 256,
    default_slo_s: float | None = None,
    run_started_at: datetime | None = None,
    max_new_tokens_limit: int = 1_000_000,
) -> Job:
    """Read and validate a job file.

    fmt: None detects the format from the extension (and, for JSON files, from the first
    object: the OpenAI batch envelope means "openai"); else one of jsonl, parquet, csv, openai.
    Deadlines are turned into seconds after run_started_at (default: now).
    """
    _check_options(default_max_new_tokens, default_slo_s, max_new_tokens_limit)
    label = str(path)
    path = Path(path)
    kind = formats.normalize_format(fmt)
    head = _head(path, label)
    if kind is None:
        kind = formats.guess_format(path, head, label)
    if kind == "parquet":
        formats.refuse_not_parquet(head, label)
    else:
        formats.refuse_binary(head, label, "CSV" if kind == "csv" else "JSON lines")
    start = run_started_at or datetime.now().astimezone()
    if start.tzinfo is None:
        start = start.astimezone()
    try:
        if kind == "json":
            kind = formats.peek_json_kind(path, label)
        elif kind in _JSON_KINDS:
            formats.peek_json_kind(path, label)  # still refuse a JSON array
        source = {"jsonl": _json_rows, "openai": _json_rows, "csv": csv_rows,
                  "parquet": parquet_rows}[kind]
        validator = RowValidator(
            file=label, tabular=kind in ("csv", "parquet"),
            default_max_new_tokens=default_max_new_tokens, default_slo_s=default_slo_s,
            run_started_at=start, max_new_tokens_limit=max_new_tokens_limit,
        )
        rows, errors, n_input = [], [], 0
        raws = source(path, label, kind == "openai") if kind in _JSON_KINDS else source(path, label)
        for raw in raws:
            item = validator.check(raw, n_input)
            n_input += 1
            (rows if isinstance(item, Row) else errors).append(item)
        sha = formats.file_sha256(path)
    except OSError as e:
        raise InputError(f"cannot read {label}: {e.strerror or e}") from None
    if n_input == 0:
        raise InputError(f"{label} has no rows", hint="a job needs at least one row")
    if kind in _JSON_KINDS and validator.objects_seen == 0:
        raise InputError(
            f"{label}: none of its {n_input} non-blank lines is a JSON object",
            hint="JSONL needs one {...} object per line; pretty-printed JSON is not JSONL",
        )
    return Job(
        path=path, fmt=kind, rows=rows, errors=errors, n_input=n_input, file_sha256=sha,
        passthrough_columns=list(validator.columns),
    )


def _check_options(default_max_new_tokens: int, default_slo_s: float | None, limit: int) -> None:
    if isinstance(default_max_new_tokens, bool) or not isinstance(default_max_new_tokens, int) \
            or default_max_new_tokens < 1:
        raise ConfigError(f"the default max_new_tokens must be an integer >= 1, got {default_max_new_tokens!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"the max_new_tokens limit must be an integer >= 1, got {limit!r}")
    if default_slo_s is not None and not (
        isinstance(default_slo_s, (int, float)) and math.isfinite(default_slo_s) and default_slo_s > 0
    ):
        raise ConfigError(f"the default SLO must be a number of seconds > 0, got {default_slo_s!r}")


def _head(path: Path, label: str) -> bytes:
    """The first bytes of the file, after refusing what is not a readable, non-empty file."""
    if not path.exists():
        raise InputError(f"job file not found: {label}", hint="check the path")
    if path.is_dir():
        raise InputError(f"{label} is a directory, not a job file")
    try:
        with open(path, "rb") as f:
            head = f.read(formats.HEAD_BYTES)
    except OSError as e:
        raise InputError(f"cannot read {label}: {e.strerror or e}", hint="check its permissions") from None
    if not head.removeprefix(formats.BOM).strip():
        what = "is empty" if os.path.getsize(path) == 0 else "holds only blank lines"
        if os.path.getsize(path) <= len(head):
            raise InputError(f"{label} {what}", hint="a job needs at least one row")
    return head


def _json_rows(path: Path, label: str, openai: bool) -> Iterator[RawRow]:
    """One RawRow per non-blank line: a JSON object, or the reason the line is not one."""
    with open(path, "rb") as f:
        for lineno, raw in formats.physical_lines(f):
            if raw is None:
                reason = f"line is longer than {formats.MAX_LINE_BYTES} bytes"
                yield RawRow(lineno, None, RowProblem("invalid_json", None, reason))
                continue
            if lineno == 1:
                raw = raw.removeprefix(formats.BOM)
            raw = raw.strip()
            if not raw:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                reason = f"line is not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1})"
                yield RawRow(lineno, None, RowProblem("invalid_encoding", None, reason))
                continue
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError) as e:
                yield RawRow(lineno, None, RowProblem("invalid_json", None, f"line is not valid JSON: {json_why(e)}"))
                continue
            if not isinstance(obj, dict):
                reason = f"line is {show(obj)}, not a JSON object; write one {{...}} object per line"
                yield RawRow(lineno, None, RowProblem("not_an_object", None, reason))
            elif openai:
                yield openai_raw_row(lineno, obj)
            else:
                yield RawRow(lineno, obj)
