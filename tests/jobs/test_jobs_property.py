"""Property: whatever the lines, read_job returns a consistent Job or raises InputError."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uellm_cli.errors import InputError
from uellm_cli.jobs.readers import read_job
from uellm_cli.jobs.schema import Job

FIELDS = ["id", "prompt", "messages", "slo_s", "deadline", "max_new_tokens", "temperature",
          "top_p", "seed", "stop", "priority", "extra"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", " ", "\x00", "2030-01-01T00:00:00Z", "1999-01-01", "12", "nan", "😀", "שלום"]),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
messages = st.lists(
    st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "system", "assistant", "tool", "bot", 3]),
                                        "content": json_values}),
    max_size=3,
)
field_values = st.one_of(json_values, messages)
records = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=8)
openai_lines = st.fixed_dictionaries(
    {"custom_id": st.one_of(st.text(max_size=6), st.integers(), st.none()),
     "method": st.sampled_from(["POST", "GET", 1]),
     "url": st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", None]),
     "body": st.one_of(records, json_values)},
)
tricky = st.sampled_from([
    b"", b"   ", b"\r", b"[", b"]", b"{", b"[1, 2]", b"null", b'"text"', b"\xef\xbb\xbf{}",
    b'{"id": "x", "prompt": "\\ud800"}', b'{"id": "x", "prompt": "a\\u0000b"}', b"\xff\xfe", b"\x00" * 8,
    b'{"id": "dup", "prompt": "p"}', b'{"id": "dup", "prompt": "q"}', b'{"id": 1, "prompt": "n"}',
    b'{"id": "1", "prompt": "s"}', b"NaN", b'{"id": "a", "slo_s": NaN, "prompt": "p"}',
])


def _dump(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


lines = st.one_of(
    st.binary(max_size=40),
    json_values.map(_dump),
    records.map(_dump),
    openai_lines.map(_dump),
    tricky,
)


def _check(job_or_error_path: Path, **kwargs) -> None:
    try:
        job = read_job(job_or_error_path, **kwargs)
    except InputError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(job, Job)
    assert job.n_input == len(job.rows) + len(job.errors)
    indexes = [r.index for r in job.rows] + [e.index for e in job.errors]
    assert sorted(indexes) == list(range(job.n_input))
    ids = [r.id for r in job.rows]
    assert len(ids) == len(set(ids))
    n_lines = job_or_error_path.read_bytes().count(b"\n") + 1
    for item in [*job.rows, *job.errors]:
        assert 1 <= item.line <= n_lines
    for row in job.rows:
        assert (row.prompt is None) != (row.messages is None)
        assert row.max_new_tokens >= 1
        assert row.deadline_s is None or row.deadline_s > 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines, min_size=0, max_size=12), st.sampled_from([None, "jsonl", "openai"]))
def test_random_json_lines_give_a_job_or_an_input_error(raw_lines, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.jsonl"
        path.write_bytes(b"\n".join(raw_lines))
        _check(path, fmt=fmt)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.none(), st.text(max_size=15), scalars)),
                max_size=8))
def test_random_csv_rows_give_a_job_or_an_input_error(rows):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.csv"
        path.write_bytes(buf.getvalue().encode("utf-8", "surrogatepass"))
        _check(path)
