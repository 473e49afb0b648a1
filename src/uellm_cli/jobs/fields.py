"""Checks of single field values, shared by every job format.

Each check returns the clean value or raises RowProblem with a short reason that quotes the
user's value, so every format rejects the same things with the same codes and words.
"""

from __future__ import annotations

import json
import math
import re
from datetime import date, datetime, time
from decimal import Decimal

ERROR_CODES = (
    "invalid_json",
    "not_an_object",
    "missing_field",
    "invalid_field",
    "empty_prompt",
    "duplicate_id",
    "invalid_text",
    "deadline_passed",
    "max_new_tokens_too_large",
    "unsupported_url",
    "unsupported_method",
    "invalid_encoding",
)
ROLES = ("system", "user", "assistant", "tool")
INT64_MAX = 2**63 - 1
SURROGATE = re.compile("[\ud800-\udfff]")


class RowProblem(Exception):
    """Why one row is rejected; raised inside the checks, turned into a RowError by check()."""

    def __init__(self, code: str, field: str | None, reason: str, id: str | None = None):
        super().__init__(reason)
        self.code = code
        self.field = field
        self.reason = reason
        self.id = id


def show(value: object) -> str:
    """A short, one-line rendering of a user value for an error reason."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float, Decimal)):
        text = repr(value) if not isinstance(value, Decimal) else str(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def is_missing(value: object, tabular: bool) -> bool:
    """null is missing everywhere; in CSV/Parquet an empty cell or a float NaN is missing too."""
    if value is None:
        return True
    if tabular:
        if isinstance(value, str) and not value.strip():
            return True
        if isinstance(value, float) and math.isnan(value):
            return True
    return False


def check_text(text: str, name: str, field: str | None = None) -> None:
    """Reject text a tokenizer or a UTF-8 writer cannot take; emoji and RTL text are fine."""
    if "\x00" in text:
        raise RowProblem("invalid_text", field or name, f"{name} contains a NUL character, which cannot be tokenized reliably")
    if not text.isascii() and SURROGATE.search(text):
        raise RowProblem("invalid_text", field or name, f"{name} contains an unpaired UTF-16 surrogate, which is not valid Unicode")


def _invalid(value: object, name: str, rule: str) -> RowProblem:
    return RowProblem("invalid_field", name, f"{name} must be {rule}, got {show(value)}")


def to_number(value: object, name: str, tabular: bool, rule: str) -> float:
    """A finite float; strings are parsed only in CSV/Parquet, where numbers may arrive as text."""
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (OverflowError, ValueError):
            raise _invalid(value, name, rule) from None
    elif tabular and isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _invalid(value, name, rule) from None
    else:
        raise _invalid(value, name, rule)
    if not math.isfinite(number):
        raise _invalid(value, name, rule)
    return number


def to_int(value: object, name: str, tabular: bool, rule: str) -> int:
    """An int; integral floats (128.0, as pandas writes ints next to NaN) count as ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = value
    if tabular and isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            raise _invalid(value, name, rule) from None
    if isinstance(number, (float, Decimal)):
        try:
            if math.isfinite(number) and number == int(number):
                return int(number)
        except (OverflowError, ValueError):
            pass
    raise _invalid(value, name, rule)


def check_messages(messages: object, name: str, tabular: bool, warnings: list[str]) -> list[dict]:
    """A non-empty list of {role, content} with text content; returns clean copies."""
    if tabular and isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except (ValueError, RecursionError) as e:
            raise RowProblem("invalid_field", name, f"{name} is not valid JSON text: {json_why(e)}") from None
    if not isinstance(messages, list):
        raise RowProblem("invalid_field", name, f"{name} must be a list of {{role, content}} objects, got {show(messages)}")
    if not messages:
        raise RowProblem("empty_prompt", name, f"{name} is an empty list")
    out: list[dict] = []
    any_text = False
    for i, msg in enumerate(messages):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            raise RowProblem("invalid_field", name, f"{where} must be an object with role and content, got {show(msg)}")
        role = msg.get("role")
        if role == "developer":
            role = "system"
            warnings.append(f"{where}: role 'developer' is read as 'system'")
        if role not in ROLES:
            raise RowProblem("invalid_field", name, f"{where}.role must be one of {', '.join(ROLES)}; got {show(role)}")
        content = _message_text(msg.get("content"), f"{where}.content", name)
        check_text(content, f"{where}.content", name)
        any_text = any_text or bool(content.strip())
        clean = {k: v for k, v in msg.items() if v is not None}
        clean["role"], clean["content"] = role, content
        out.append(clean)
    if not any_text:
        raise RowProblem("empty_prompt", name, f"every message in {name} is empty")
    return out


def _message_text(content: object, where: str, name: str) -> str:
    """String content, or OpenAI-style text parts joined; images and other parts are refused."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RowProblem("invalid_field", name, f"{where} may only hold text parts ({{type: text, text}}), got {show(part)}")
            texts.append(part["text"])
        return "".join(texts)
    raise RowProblem("invalid_field", name, f"{where} must be a string, got {show(content)}")


def check_stop(value: object, name: str, tabular: bool) -> tuple[str, ...]:
    """A string or a list of strings; a CSV cell may hold the list as JSON text."""
    if tabular and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, list):
            value = parsed
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise RowProblem("invalid_field", name, f"{name} must be a string or a list of strings, got {show(value)}")
    for s in value:
        if not s:
            raise RowProblem("invalid_field", name, f"{name} holds an empty string")
        check_text(s, name)
    return tuple(value)


def deadline_seconds(value: object, name: str, start: datetime) -> float:
    """Seconds from the run start to an ISO-8601 deadline; naive times are local times."""
    rule = "an ISO-8601 time such as 2025-06-01T18:00:00Z"
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, date):
        when = datetime.combine(value, time())
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _invalid(value, name, rule) from None
    else:
        raise _invalid(value, name, rule)
    try:
        if when.tzinfo is None:
            when = when.astimezone()
        seconds = (when - start).total_seconds()
    except (OverflowError, OSError, ValueError):
        raise RowProblem("invalid_field", name, f"{name} {show(value)} is out of range") from None
    if seconds <= 0:
        raise RowProblem(
            "deadline_passed", name,
            f"{name} {show(value)} is {-seconds:.0f} s before the run started",
        )
    return seconds


def check_passthrough(value: object, name: str, depth: int = 0) -> None:
    """Passthrough values are kept as they are, but must be writable as UTF-8 later."""
    if isinstance(value, str):
        if not value.isascii() and SURROGATE.search(value):
            raise RowProblem("invalid_text", name, f"{name} contains an unpaired UTF-16 surrogate, which is not valid Unicode")
    elif depth < 20 and isinstance(value, dict):
        for k, v in value.items():
            check_passthrough(k, name, depth + 1)
            check_passthrough(v, name, depth + 1)
    elif depth < 20 and isinstance(value, list):
        for v in value:
            check_passthrough(v, name, depth + 1)


def json_why(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} (column {error.colno})"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error)
