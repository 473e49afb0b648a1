"""CSV and Parquet job files split into raw records (checking the rows is `validate`'s job).

Both are streamed: CSV line by line, Parquet in record batches, so a large job never sits in
memory twice. Column problems that would reject every row refuse the file instead.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from uellm_cli.errors import InputError
from uellm_cli.jobs.fields import RowProblem
from uellm_cli.jobs.formats import BOM, MAX_LINE_BYTES, physical_lines
from uellm_cli.jobs.validate import RawRow

PARQUET_BATCH_ROWS = 2048
_TOO_LONG = "\ufffe"  # stands in for a line over MAX_LINE_BYTES (a noncharacter, never in text)


def _require_columns(names: list[str], label: str, kind: str) -> None:
    """A job needs an id column and a prompt or messages column, whatever the format."""
    lower = {n.lower(): n for n in names}
    for need in ("id", ("prompt", "messages")):
        wanted = need if isinstance(need, tuple) else (need,)
        if any(w in names for w in wanted):
            continue
        what = " or ".join(repr(w) for w in wanted)
        hint = f"columns found: {', '.join(names[:12]) or 'none'}"
        near = [lower[w] for w in wanted if w in lower]
        if near:
            hint = f"found {near[0]!r}: column names are case-sensitive"
        elif kind == "CSV" and len(names) == 1 and any(s in names[0] for s in ";\t|"):
            hint = "only comma-separated files are read"
        raise InputError(f"{label}: the {kind} has no {what} column", hint=hint)


def csv_rows(path: Path, label: str) -> Iterator[RawRow]:
    """One RawRow per CSV record; `line` is the physical line the record starts on."""
    if csv.field_size_limit() < MAX_LINE_BYTES:
        csv.field_size_limit(MAX_LINE_BYTES)
    bad_lines: set[int] = set()
    with open(path, "rb") as f:
        reader = csv.reader(_decoded_lines(f, bad_lines))
        header: list[str] | None = None
        last = 0
        while True:
            start = last + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                last = reader.line_num
                if header is None:
                    raise InputError(f"{label}:{start}: the CSV header cannot be parsed: {e}") from None
                yield RawRow(start, None, RowProblem("invalid_field", None, f"CSV row cannot be parsed: {e}"))
                continue
            end, last = reader.line_num, reader.line_num
            if all(not c.strip() for c in cells):
                continue  # blank line (or only empty cells): not a row
            broken = next((n for n in range(start, end + 1) if n in bad_lines), None)
            if header is None:
                if broken is not None or any(_TOO_LONG in c for c in cells):
                    raise InputError(f"{label}:{start}: the CSV header is not valid UTF-8 text")
                header = _header(cells, label, start)
                continue
            if broken is not None:
                problem = RowProblem("invalid_encoding", None, f"line {broken} is not valid UTF-8")
                yield RawRow(start, None, problem)
            elif any(_TOO_LONG in c for c in cells):
                problem = RowProblem("invalid_field", None, f"a line of this row is longer than {MAX_LINE_BYTES} bytes")
                yield RawRow(start, None, problem)
            else:
                record = {name: (cells[i] if i < len(cells) and cells[i] != "" else None)
                          for i, name in enumerate(header)}
                problem = None
                if len(cells) > len(header) and any(c.strip() for c in cells[len(header):]):
                    reason = f"row has {len(cells)} cells but the header has {len(header)} columns"
                    problem = RowProblem("invalid_field", None, reason)
                yield RawRow(start, record, problem)
    if header is None:
        raise InputError(f"{label} has no CSV header and no rows", hint="the first line must name the columns")


def _decoded_lines(f, bad_lines: set[int]) -> Iterator[str]:
    for lineno, raw in physical_lines(f):
        if raw is None:
            yield _TOO_LONG + "\n"
            continue
        if lineno == 1:
            raw = raw.removeprefix(BOM)
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.add(lineno)
            yield raw.decode("utf-8", "replace")


def _header(cells: list[str], label: str, line: int) -> list[str]:
    names = [c.strip() or f"column_{i + 1}" for i, c in enumerate(cells)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{label}:{line}: CSV column {dupes[0]!r} appears more than once")
    _require_columns(names, label, "CSV")
    return names


def parquet_rows(path: Path, label: str) -> Iterator[RawRow]:
    """One RawRow per Parquet row, read in record batches; `line` is the 1-based row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InputError(f"{label} is not a readable Parquet file: {_first_line(e)}") from None
    schema = pf.schema_arrow
    names = list(schema.names)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{label}: Parquet column {dupes[0]!r} appears more than once")
    _require_columns(names, label, "Parquet file")
    _check_parquet_types(schema, label)
    if pf.metadata.num_rows == 0:
        return
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for rec in batch.to_pylist():
                row += 1
                yield RawRow(row, rec)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InputError(f"{label}: Parquet data cannot be read after row {row}: {_first_line(e)}") from None


def _check_parquet_types(schema, label: str) -> None:
    """Refuse required columns whose type no row could use, naming every one of them (other
    columns are checked per row)."""
    import pyarrow as pa

    def text(t) -> bool:
        if pa.types.is_dictionary(t):
            return text(t.value_type)
        return pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view"

    wrong: list[str] = []
    t = schema.field("id").type
    if not (text(t) or pa.types.is_integer(t)):
        wrong.append(f"column 'id' has type {t} (it must hold strings or integers)")
    if "prompt" in schema.names:
        t = schema.field("prompt").type
        if not (text(t) or pa.types.is_null(t)):
            wrong.append(f"column 'prompt' has type {t} (it must hold strings)")
    if "messages" in schema.names:
        t = schema.field("messages").type
        is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
        if not (text(t) or pa.types.is_null(t) or (is_list and pa.types.is_struct(t.value_type))):
            wrong.append(f"column 'messages' has type {t} (it must hold lists of {{role, content}} "
                         "structs or JSON text)")
    if wrong:
        raise InputError(f"{label}: Parquet {'; '.join(wrong)}",
                         hint="cast the columns, e.g. with pandas .astype(str)")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
