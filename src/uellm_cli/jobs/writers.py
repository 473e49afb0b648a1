"""Durable outputs of a run: the append-only result log and the final results/errors files.

The log (`results.log.jsonl`) is what makes a run resumable: each finished batch is appended,
flushed and fsynced before the executor moves on, so a kill -9 loses at most the batch being
written. The final files (`results.parquet` or `results.jsonl`, `errors.jsonl`) are rebuilt
from the records at the end of a run and replace the previous ones atomically.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from uellm_cli.errors import ConfigError
from uellm_cli.jobs.durable import atomic_path, atomic_write_bytes, fsync_dir, json_line
from uellm_cli.jobs.results import ATTEMPT_KEY, RESULT_FIELDS, RowResult
from uellm_cli.jobs.schema import RowError

LOG_NAME = "results.log.jsonl"
ERRORS_NAME = "errors.jsonl"
RESULT_NAMES = {"parquet": "results.parquet", "jsonl": "results.jsonl", "openai": "results.jsonl"}
OUTPUT_FORMATS = tuple(RESULT_NAMES)
ROW_COLUMN = "row"  # 0-based input position, written first so users can join back to the input
OPENAI_URL_KEY = "_openai_url"  # passthrough key the OpenAI reader sets; "_" keys are internal


# ---------------------------------------------------------------- append-only result log


@dataclass(slots=True)
class LogContents:
    """What a result log holds: the last record per row index, and what was ignored."""

    records: dict[int, dict] = field(default_factory=dict)
    torn_bytes: int = 0  # bytes after the last newline: a write cut short by a kill
    bad_lines: int = 0  # complete lines that are not a record with an int "index"


def read_log(path: Path) -> LogContents:
    """Read a result log (a missing file is an empty log).

    Only lines ending in a newline count: that is the unit append() makes durable. When an
    index appears twice the later record wins (a --retry-errors rerun appends a new record).
    """
    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return LogContents()
    out = LogContents()
    cut = data.rfind(b"\n") + 1
    out.torn_bytes = len(data) - cut
    # Split on b"\n" only: str.splitlines would also split on U+2028 and friends.
    for raw in data[:cut].split(b"\n")[:-1]:
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            out.bad_lines += 1
            continue
        idx = rec.get("index") if isinstance(rec, dict) else None
        if not isinstance(idx, int) or isinstance(idx, bool):
            out.bad_lines += 1
            continue
        out.records[idx] = rec
    return out


def _end_of_last_line(fd: int, size: int) -> int:
    """Offset just after the last b"\\n" in the file (0 when there is none)."""
    pos = size
    chunk = 1 << 16
    while pos > 0:
        start = max(0, pos - chunk)
        buf = os.pread(fd, pos - start, start)
        nl = buf.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


class ResultLog:
    """`<out>/results.log.jsonl`: one JSON line per RowResult, appended batch by batch.

    A batch is durable when append() returns. Opening for append cuts a torn last line (left by
    a kill in the middle of a write) so the file stays valid JSONL.
    """

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOG_NAME
        self.truncated_bytes = 0  # torn bytes removed by the last open()
        self._f: typing.BinaryIO | None = None

    @staticmethod
    def load(path: Path) -> dict[int, dict]:
        """index -> last record of that row; `path` is the log file or its out folder."""
        return read_log(path).records

    def open(self) -> ResultLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            good = _end_of_last_line(fd, size)
            if good < size:
                os.ftruncate(fd, good)
                os.fsync(fd)
            self.truncated_bytes = size - good
            self._f = os.fdopen(fd, "ab", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        if created:
            fsync_dir(self.path.parent)
        return self

    def append(self, results: Iterable[RowResult], *, attempt: int | None = None) -> None:
        """Append one batch of results and fsync; the rows are done once this returns. Each
        line carries the attempt that wrote it (a resumed run's report spans every attempt)."""
        tag = {} if attempt is None else {ATTEMPT_KEY: attempt}
        self.append_records(r.to_record() | tag for r in results)

    def append_records(self, records: Iterable[dict]) -> None:
        """Same as append() for records already flattened (each needs an int "index")."""
        lines = []
        for rec in records:
            if not isinstance(rec.get("index"), int):
                raise ValueError(f"result record without an int index: {rec!r:.200}")
            # ASCII-only: any str (even a lone surrogate) encodes, and no byte of a
            # multi-byte character can be torn on its own.
            lines.append(json_line(rec, ascii_only=True))
        if not lines:
            return
        if self._f is None:
            self.open()
        assert self._f is not None
        data = b"".join(lines)
        view = memoryview(data)
        while view:  # unbuffered writes may be partial
            n = self._f.write(view)
            view = view[n:]
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> ResultLog:
        return self.open() if self._f is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- final results file


_ARROW_BY_PY = {str: "string", int: "int64", float: "float64", bool: "bool"}


def result_column_types() -> dict[str, str]:
    """Arrow type name of each result column, from RowResult's annotations.

    Derived rather than listed so a field added to RowResult/RESULT_FIELDS gets a column type
    without anyone editing this file; `warnings` (a list) is written as "; "-joined text.
    """
    hints = typing.get_type_hints(RowResult)
    types: dict[str, str] = {ROW_COLUMN: "int64"}
    for name in RESULT_FIELDS:
        hint = hints[name]
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        base = typing.get_origin(args[0]) or args[0]
        types[name] = _ARROW_BY_PY.get(base, "string")
    return types


def _coerce(value: object, kind: str) -> object:
    if value is None:
        return None
    if kind == "string":
        if isinstance(value, (list, tuple)):
            return "; ".join(map(str, value)) if value else None
        return value if isinstance(value, str) else str(value)
    if kind == "int64":
        return int(value)  # type: ignore[call-overload]
    if kind == "float64":
        return float(value)  # type: ignore[arg-type]
    if kind == "bool":
        return bool(value)
    return value


def _ordered(records: Iterable[dict]) -> list[dict]:
    """Records in input order, one per index (the last one given wins)."""
    by_index: dict[int, dict] = {}
    for rec in records:
        idx = rec.get("index", rec.get(ROW_COLUMN))
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise ValueError(f"result record without an int index: {rec!r:.200}")
        by_index[idx] = rec
    return [by_index[i] for i in sorted(by_index)]


def _reserved() -> set[str]:
    return {ROW_COLUMN, "index", *RESULT_FIELDS}


def _passthrough_names(records: list[dict], given: Sequence[str] | None) -> list[tuple[str, str]]:
    """(column name in the output, key in the record) for each passthrough column.

    A passthrough named like a result column cannot share its name: "row" is written as
    "input_row"; keys starting with "_" are internal and never written.
    """
    if given is None:
        seen: dict[str, None] = {}
        for rec in records:
            for k in rec:
                if k not in _reserved() and not k.startswith("_"):
                    seen.setdefault(k, None)
        given = list(seen)
    out = []
    for key in given:
        if key.startswith("_") or key in RESULT_FIELDS or key == "index":
            continue  # RowResult.to_record() already let the result field win
        out.append((f"input_{key}" if key == ROW_COLUMN else key, key))
    return out


def _passthrough_array(values: list[object]):
    """Arrow array with an inferred type; mixed types become JSON text instead of failing."""
    import pyarrow as pa

    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        arr = None
    if arr is None or pa.types.is_null(arr.type):
        if arr is not None:  # all null: a typed column keeps the schema stable
            return pa.array(values, type=pa.string())
        texts = [None if v is None else json_line(v).decode().rstrip("\n") for v in values]
        return pa.array(texts, type=pa.string())
    return arr


def _write_parquet(target: Path, rows: list[dict], pt: list[tuple[str, str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = result_column_types()
    arrays, fields = [], []
    for name, kind in types.items():
        typ = getattr(pa, kind if kind != "bool" else "bool_")()
        src = "index" if name == ROW_COLUMN else name
        arrays.append(pa.array([_coerce(r.get(src), kind) for r in rows], type=typ))
        fields.append(pa.field(name, typ))
    for name, key in pt:
        arr = _passthrough_array([r.get(key) for r in rows])
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def _jsonl_row(rec: dict, pt: list[tuple[str, str]], types: dict[str, str]) -> dict:
    out = {}
    for name, kind in types.items():
        out[name] = _coerce(rec.get("index" if name == ROW_COLUMN else name), kind)
    for name, key in pt:
        out[name] = rec.get(key)
    return out


def _openai_row(rec: dict, model_name: str, created: int) -> dict:
    """One line of the OpenAI batch output format (what /v1/batches gives back)."""
    row = rec["index"]
    base = {"id": f"batch_req_{row}", "custom_id": rec.get("id")}
    if rec.get("status") != "ok":
        code = rec.get("error_code") or rec.get("status") or "error"
        message = rec.get("error_message") or code
        return {**base, "response": None, "error": {"code": code, "message": message}}
    prompt = int(rec.get("prompt_tokens") or 0)
    completion = int(rec.get("output_tokens") or 0)
    text = rec.get("output_text") or ""
    finish = rec.get("finish_reason") or "stop"
    if str(rec.get(OPENAI_URL_KEY) or "").rstrip("/").endswith("/v1/completions"):
        body = {"id": f"cmpl-uellm-{row}", "object": "text_completion",
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    else:
        body = {"id": f"chatcmpl-uellm-{row}", "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish}]}
    body = {**body, "created": created, "model": model_name,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}
    response = {"status_code": 200, "request_id": f"uellm-req-{row}", "body": body}
    return {**base, "response": response, "error": None}


def write_results(
    out_dir: Path,
    records: Iterable[dict],
    *,
    fmt: str = "parquet",
    passthrough_columns: Sequence[str] | None = None,
    model_name: str = "",
    created: int | None = None,
) -> Path:
    """Write every input row's result, in input order, atomically; returns the file written.

    records: one dict per input row (RowResult.to_record(), with "index"); ok, error and
    rejected rows alike. passthrough_columns: the input's extra columns, in order (None: every
    non-result key found in the records, in first-seen order). fmt "openai" writes the OpenAI
    batch output format; model_name and created (unix seconds, default now) fill its bodies.
    A results file of the other format left by an earlier run is removed, so the folder never
    holds two disagreeing results files.
    """
    if fmt not in RESULT_NAMES:
        raise ConfigError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    out_dir = Path(out_dir)
    rows = _ordered(records)
    target = out_dir / RESULT_NAMES[fmt]
    if fmt == "parquet":
        _write_parquet(target, rows, _passthrough_names(rows, passthrough_columns))
    elif fmt == "jsonl":
        pt = _passthrough_names(rows, passthrough_columns)
        types = result_column_types()
        atomic_write_bytes(target, b"".join(json_line(_jsonl_row(r, pt, types)) for r in rows))
    else:
        import time

        stamp = int(time.time()) if created is None else created
        data = b"".join(json_line(_openai_row(r, model_name, stamp)) for r in rows)
        atomic_write_bytes(target, data)
    for name in set(RESULT_NAMES.values()) - {target.name}:
        (out_dir / name).unlink(missing_ok=True)
    return target


# ---------------------------------------------------------------- errors.jsonl

ERROR_FIELDS = ("row", "file", "line", "id", "field", "code", "reason")


def execution_error(record: dict, *, file: str, line: int | None) -> dict:
    """The errors.jsonl entry of a row that failed while running (field is null)."""
    return {
        "row": record.get("index"),
        "file": file,
        "line": line,
        "id": record.get("id"),
        "field": None,
        "code": record.get("error_code") or "error",
        "reason": record.get("error_message") or "failed while running",
    }


def _error_dict(err: dict | RowError) -> dict:
    d = err.to_dict() if isinstance(err, RowError) else dict(err)
    if "row" not in d:
        d["row"] = d.get("index")
    return {k: d.get(k) for k in ERROR_FIELDS}


def write_errors(out_dir: Path, errors: Iterable[dict | RowError]) -> Path:
    """Write errors.jsonl (always, empty when nothing failed) in input order, atomically.

    errors: RowError objects or dicts with file, line, id, field, code, reason and optionally
    index/row (see execution_error for rows that failed at run time).
    """
    items = [_error_dict(e) for e in errors]
    items.sort(key=lambda d: (d["row"] is None, d["row"] if isinstance(d["row"], int) else 0))
    target = Path(out_dir) / ERRORS_NAME
    return atomic_write_bytes(target, b"".join(json_line(d) for d in items))
