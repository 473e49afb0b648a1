"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

Every final output of a run (results, errors, manifest) is written to a temp file in the same
folder, fsynced, renamed over the target with os.replace, and the folder is fsynced so the
rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it replaces `target` durably.

    The caller writes the temp file by any means (pyarrow, open()). On an exception the temp
    file is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(target: Path, data: bytes) -> Path:
    """Write `data` to `target` atomically; returns `target`."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(target)


def atomic_write_json(target: Path, obj: object, *, indent: int | None = 2) -> Path:
    """Write `obj` as a JSON document to `target` atomically (UTF-8, a final newline)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False,
                      separators=None if indent is not None else (",", ":"))
    return atomic_write_bytes(target, (text + "\n").encode("utf-8"))


def json_default(value: object) -> object:
    """Encode what passthrough columns may hold (numpy, pandas, dates, bytes) as JSON."""
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas missing values
        return None
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "isoformat"):  # pandas Timestamp, time
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def clean_json(value: object, default: Callable[[object], object] = json_default) -> object:
    """Replace NaN/inf by None (strict JSON has neither) and convert exotic values, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, dict):
        return {str(k): clean_json(v, default) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v, default) for v in value]
    converted = default(value)
    if type(converted) is type(value):  # a default that cannot convert: stop recursing
        return str(value)
    return clean_json(converted, default)


_SPLITLINES_EXTRA = ("\x85", "\u2028", "\u2029")  # json.dumps escapes the ones below 0x20


def json_line(obj: object, *, ascii_only: bool = False) -> bytes:
    """One strict-JSON line ending in b"\\n". Non-ASCII stays readable unless it cannot be
    encoded (lone surrogates), in which case that line falls back to \\u escapes."""
    cleaned = clean_json(obj)
    if not ascii_only:
        text = json.dumps(cleaned, ensure_ascii=False, allow_nan=False)
        # Line breaks other than \n that str.splitlines() honours: keep them escaped so
        # every reader sees one record per line.
        for ch in _SPLITLINES_EXTRA:
            text = text.replace(ch, f"\\u{ord(ch):04x}")
        try:
            return (text + "\n").encode()
        except UnicodeEncodeError:
            pass
    return (json.dumps(cleaned, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
