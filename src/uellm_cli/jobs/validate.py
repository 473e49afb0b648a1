"""Row rules shared by every job format: one raw record in, one Row or one RowError out.

Readers only split a file into records; every rule about rows (required fields, unique ids,
defaults, passthrough) lives here, and single values are checked by `fields`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from uellm_cli.jobs.fields import (
    INT64_MAX,
    SURROGATE,
    RowProblem,
    check_messages,
    check_passthrough,
    check_stop,
    check_text,
    deadline_seconds,
    is_missing,
    show,
    to_int,
    to_number,
)
from uellm_cli.jobs.schema import Row, RowError, Sampling

FIELDS = frozenset(
    {"id", "prompt", "messages", "slo_s", "deadline", "max_new_tokens", "temperature", "top_p",
     "seed", "stop", "priority"}
)
_CONTROL_IN_ID = re.compile("[\x00-\x1f\x7f]")


@dataclass(slots=True)
class RawRow:
    """One input row as a reader found it: a record to check, or a problem found while reading.

    labels maps our field names to the names the user wrote (OpenAI: "body.max_tokens"), so
    messages speak the user's words. problem on a row with a record is raised after the id is
    checked, so the row still claims its id.
    """

    line: int
    record: dict | None
    problem: RowProblem | None = None
    labels: dict[str, str] | None = None
    warnings: list[str] | None = None
    raw_prompt: bool = False  # the prompt is a completion prompt: no chat template


@dataclass(slots=True)
class RowValidator:
    """Checks records of one job in input order; remembers ids and passthrough column names."""

    file: str
    tabular: bool
    default_max_new_tokens: int
    default_slo_s: float | None
    run_started_at: datetime
    max_new_tokens_limit: int
    seen_ids: dict[str, int] = field(default_factory=dict)
    columns: dict[str, None] = field(default_factory=dict)
    objects_seen: int = 0

    def check(self, raw: RawRow, index: int) -> Row | RowError:
        """Turn one raw row into a Row, or into the RowError of its first failing field."""
        labels = raw.labels or {}
        rid: str | None = None
        try:
            if raw.record is None:
                raise raw.problem or RowProblem("invalid_json", None, "row could not be read")
            rec = raw.record
            self.objects_seen += 1
            for key in rec:
                # "_" keys are internal (the OpenAI url); writers never make columns of them.
                if key not in FIELDS and key not in self.columns and not key.startswith("_"):
                    self.columns[key] = None
            rid = self._id(rec, labels)
            first = self.seen_ids.get(rid)
            if first is not None:
                raise RowProblem(
                    "duplicate_id", labels.get("id", "id"),
                    f"id {show(rid)} is already used on line {first}; the first row is kept",
                )
            # An id belongs to its first row even if that row is rejected: ids stay unique.
            self.seen_ids[rid] = raw.line
            if raw.problem is not None:
                raise raw.problem
            return self._row(rec, raw, index, rid, labels)
        except RowProblem as p:
            return RowError(
                file=self.file, line=raw.line, id=p.id if p.id is not None else rid,
                field=p.field, code=p.code, reason=p.reason, index=index,
                deadline_s=self._deadline_of_rejected(raw.record, labels),
            )

    def _deadline_of_rejected(self, rec: dict | None, labels: dict) -> float | None:
        """The deadline a rejected row asked for (or the default), if its fields give one."""
        if rec is None:
            return None
        try:
            return self._deadline_s(rec, labels)
        except RowProblem:
            return None

    def _id(self, rec: dict, labels: dict) -> str:
        name = labels.get("id", "id")
        value = rec.get("id")
        if is_missing(value, self.tabular):
            if "custom_id" in rec and "body" in rec:
                raise RowProblem("missing_field", "id", "row has no id; it looks like the OpenAI batch format: pass --format openai")
            raise RowProblem("missing_field", name, f"row has no {name}")
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise RowProblem("invalid_field", name, f"{name} must be a string or an integer, got {show(value)}")
        if not value.strip():
            raise RowProblem("invalid_field", name, f"{name} is empty")
        if _CONTROL_IN_ID.search(value) or (not value.isascii() and SURROGATE.search(value)):
            raise RowProblem("invalid_field", name, f"{name} {show(value)} contains control characters or invalid Unicode")
        return value

    def _row(self, rec: dict, raw: RawRow, index: int, rid: str, labels: dict) -> Row:
        tab = self.tabular
        warnings = list(raw.warnings or ())
        prompt, messages = self._content(rec, labels, warnings)
        deadline_s = self._deadline_s(rec, labels)
        mnt = rec.get("max_new_tokens")
        if is_missing(mnt, tab):
            max_new_tokens = self.default_max_new_tokens
        else:
            name = labels.get("max_new_tokens", "max_new_tokens")
            max_new_tokens = to_int(mnt, name, tab, "an integer >= 1")
            if max_new_tokens < 1:
                raise RowProblem("invalid_field", name, f"{name} must be an integer >= 1, got {show(mnt)}")
            if max_new_tokens > self.max_new_tokens_limit:
                raise RowProblem(
                    "max_new_tokens_too_large", name,
                    f"{name} {show(mnt)} is above the limit of {self.max_new_tokens_limit}",
                )
        sampling = self._sampling(rec, labels)
        priority = 0
        if not is_missing(rec.get("priority"), tab):
            name = labels.get("priority", "priority")
            priority = to_int(rec["priority"], name, tab, "an integer")
            if abs(priority) > INT64_MAX:
                raise RowProblem("invalid_field", name, f"{name} is out of range, got {show(rec['priority'])}")
        value = rec.get("id")
        if isinstance(value, int) and not isinstance(value, bool):
            warnings.append(f"{labels.get('id', 'id')} {value} is a number; results carry it as the text {rid!r}")
        passthrough = {k: v for k, v in rec.items() if k not in FIELDS}
        for key, value in passthrough.items():
            check_passthrough(value, key)
        return Row(
            index=index, line=raw.line, id=rid, prompt=prompt, messages=messages,
            deadline_s=deadline_s, max_new_tokens=max_new_tokens, sampling=sampling,
            priority=priority, passthrough=passthrough, warnings=warnings,
            raw_prompt=raw.raw_prompt and prompt is not None,
        )

    def _content(self, rec: dict, labels: dict, warnings: list[str]) -> tuple[str | None, list | None]:
        tab = self.tabular
        p_name = labels.get("prompt", "prompt")
        m_name = labels.get("messages", "messages")
        prompt, messages = rec.get("prompt"), rec.get("messages")
        has_p, has_m = not is_missing(prompt, tab), not is_missing(messages, tab)
        if has_p and has_m:
            raise RowProblem("invalid_field", p_name, f"give either {p_name} or {m_name}, not both")
        if not has_p and not has_m:
            if "prompt" in rec:
                raise RowProblem("empty_prompt", p_name, f"{p_name} is empty")
            if "messages" in rec:
                raise RowProblem("empty_prompt", m_name, f"{m_name} is empty")
            what = p_name if p_name == m_name else f"{p_name} or {m_name}"
            raise RowProblem("missing_field", p_name, f"row has no {what}")
        if has_p:
            if not isinstance(prompt, str):
                raise RowProblem("invalid_field", p_name, f"{p_name} must be a string, got {show(prompt)}")
            if not prompt.strip():
                raise RowProblem("empty_prompt", p_name, f"{p_name} is empty")
            check_text(prompt, p_name)
            return prompt, None
        return None, check_messages(messages, m_name, tab, warnings)

    def _deadline_s(self, rec: dict, labels: dict) -> float | None:
        tab = self.tabular
        slo, deadline = rec.get("slo_s"), rec.get("deadline")
        has_slo, has_deadline = not is_missing(slo, tab), not is_missing(deadline, tab)
        s_name = labels.get("slo_s", "slo_s")
        d_name = labels.get("deadline", "deadline")
        if has_slo and has_deadline:
            raise RowProblem("invalid_field", d_name, f"give either {s_name} or {d_name}, not both")
        if has_slo:
            value = to_number(slo, s_name, tab, "a number of seconds > 0")
            if value <= 0:
                raise RowProblem("invalid_field", s_name, f"{s_name} must be a number of seconds > 0, got {show(slo)}")
            return value
        if has_deadline:
            return deadline_seconds(deadline, d_name, self.run_started_at)
        return self.default_slo_s

    def _sampling(self, rec: dict, labels: dict) -> Sampling:
        tab = self.tabular
        kwargs: dict = {}
        value = rec.get("temperature")
        if not is_missing(value, tab):
            name = labels.get("temperature", "temperature")
            t = to_number(value, name, tab, "a number from 0 to 2")
            if not 0.0 <= t <= 2.0:
                raise RowProblem("invalid_field", name, f"{name} must be a number from 0 to 2, got {show(value)}")
            kwargs["temperature"] = t
        value = rec.get("top_p")
        if not is_missing(value, tab):
            name = labels.get("top_p", "top_p")
            p = to_number(value, name, tab, "a number > 0 and <= 1")
            if not 0.0 < p <= 1.0:
                raise RowProblem("invalid_field", name, f"{name} must be a number > 0 and <= 1, got {show(value)}")
            kwargs["top_p"] = p
        value = rec.get("seed")
        if not is_missing(value, tab):
            name = labels.get("seed", "seed")
            seed = to_int(value, name, tab, "an integer >= 0")
            if not 0 <= seed <= INT64_MAX:
                raise RowProblem("invalid_field", name, f"{name} must be an integer from 0 to 2**63-1, got {show(value)}")
            kwargs["seed"] = seed
        value = rec.get("stop")
        if not is_missing(value, tab):
            kwargs["stop"] = check_stop(value, labels.get("stop", "stop"), tab)
        return Sampling(**kwargs)
