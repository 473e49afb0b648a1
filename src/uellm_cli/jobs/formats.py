"""Which format a job file is in, and the whole-file refusals its first bytes already decide.

Every refusal is an InputError naming the file, with a hint saying what to do instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from uellm_cli.errors import ConfigError, InputError
from uellm_cli.jobs.openai_batch import is_openai_line

FORMATS = ("jsonl", "parquet", "csv", "openai")
FORMAT_HINT = "pass --format jsonl, parquet, csv or openai"
_BY_SUFFIX = {
    ".jsonl": "json", ".json": "json", ".ndjson": "json",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv",
}
_COMPRESSED = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"BZh": "bzip2",
               b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
HEAD_BYTES = 64 * 1024
MAX_LINE_BYTES = 64 * 1024 * 1024  # one row above this is refused without holding it in memory
BOM = b"\xef\xbb\xbf"
_BINARY_SHARE = 0.25  # share of undecodable or control characters that makes a file "binary"


def physical_lines(f: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, bytes) for each line split on b"\\n"; None for an over-long line."""
    lineno = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            while True:  # skip the rest of the line without keeping it
                more = f.readline(1 << 20)
                if not more or more.endswith(b"\n"):
                    break
            yield lineno, None
            continue
        yield lineno, raw


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalize_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    name = fmt.strip().lower()
    if name not in FORMATS:
        raise ConfigError(f"unknown job format {fmt!r}", hint=FORMAT_HINT)
    return name


def guess_format(path: Path, head: bytes, label: str) -> str:
    """"json" (JSONL or OpenAI, told apart later by content), "csv" or "parquet"."""
    suffix = path.suffix.lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    if suffix in (".gz", ".zip", ".bz2", ".xz", ".zst"):
        raise InputError(f"{label}: compressed job files are not read", hint="decompress it first")
    if head.startswith(b"PAR1"):
        return "parquet"
    first = head.removeprefix(BOM).lstrip()[:1]
    if first in (b"{", b"["):
        return "json"
    raise InputError(
        f"{label}: cannot tell the job format from the name {path.name!r}",
        hint=f"use a .jsonl, .parquet or .csv name, or {FORMAT_HINT}",
    )


def refuse_binary(head: bytes, label: str, expected: str) -> None:
    """Refuse a file that cannot be a UTF-8 text file of the expected format."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{label} is UTF-16 text; job files must be UTF-8",
                         hint="convert it, e.g. iconv -f UTF-16 -t UTF-8")
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise InputError(f"{label} is a {kind} archive, not {expected} text", hint="decompress it first")
    if head.startswith(b"PAR1"):
        raise InputError(f"{label} is a Parquet file, not {expected} text",
                         hint="give it a .parquet name or pass --format parquet")
    text = head.decode("utf-8", "replace")
    if not text:
        return
    bad = text.count("\ufffd") + sum(1 for c in text if c < " " and c not in "\t\n\r\f")
    if bad / len(text) > _BINARY_SHARE:
        raise InputError(f"{label} looks like a binary file, not {expected} text",
                         hint=f"check the file name, or {FORMAT_HINT}")


def refuse_not_parquet(head: bytes, label: str) -> None:
    if head.startswith(b"PAR1"):
        return
    hint = FORMAT_HINT
    first = head.removeprefix(BOM).lstrip()[:1]
    if first == b"{":
        hint = "it looks like JSONL: give it a .jsonl name or pass --format jsonl"
    raise InputError(f"{label} is not a Parquet file (no PAR1 magic bytes)", hint=hint)


def peek_json_kind(path: Path, label: str, max_lines: int = 20) -> str:
    """"openai" when the first JSON object line has the OpenAI batch envelope, else "jsonl".

    Also refuses a JSON array, the most common near-miss for JSONL.
    """
    kind = None
    seen = 0
    array_line: bytes | None = None
    with open(path, "rb") as f:
        for lineno, raw in physical_lines(f):
            if raw is None:
                seen += 1
                continue
            text = (raw.removeprefix(BOM) if lineno == 1 else raw).strip()
            if not text:
                continue
            seen += 1
            if seen == 1 and text.startswith(b"["):
                array_line = text
                continue
            if array_line is not None:
                break
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError):
                obj = None
            if isinstance(obj, dict):
                kind = "openai" if is_openai_line(obj) else "jsonl"
                break
            if seen >= max_lines:
                break
    if array_line is not None:
        _refuse_array(array_line, label, alone=seen == 1)
    return kind or "jsonl"


def _refuse_array(first: bytes, label: str, alone: bool) -> None:
    """A first line opening a JSON array means a JSON document, unless it is just a bad row."""
    try:
        value = json.loads(first)
    except RecursionError:
        return  # a complete but absurdly nested line: a bad row, not a JSON document
    except ValueError:
        value = None  # a multi-line array: "[" alone, or the start of one
    if value is None or alone or any(isinstance(v, dict) for v in value):
        raise InputError(
            f"{label}: this is a JSON array; write one object per line (JSONL)",
            hint='e.g. jq -c ".[]" in.json > jobs.jsonl',
        )
