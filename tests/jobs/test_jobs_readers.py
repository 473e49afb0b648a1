"""read_job on good files of every format, format detection, and each row rule."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from uellm_cli.errors import ConfigError, InputError
from uellm_cli.jobs.readers import read_job
from uellm_cli.jobs.schema import Row, RowError

GOOD = Path(__file__).parent.parent / "data" / "good"
START = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def write_jsonl(tmp_path: Path, *records: dict, name: str = "job.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def one(tmp_path: Path, record: dict, **kwargs) -> Row | RowError:
    """Read a one-row job and return its row or its error."""
    job = read_job(write_jsonl(tmp_path, record), run_started_at=START, **kwargs)
    assert job.n_input == 1
    return job.rows[0] if job.rows else job.errors[0]


def rejected(item: Row | RowError, code: str, field: str | None) -> RowError:
    assert isinstance(item, RowError), item
    assert (item.code, item.field) == (code, field), item.one_line()
    return item


# ------------------------------------------------------------------ good files, every format


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("jobs.jsonl", "jsonl"), ("jobs.csv", "csv"), ("jobs.parquet", "parquet"), ("jobs_openai.jsonl", "openai")],
)
def test_good_files_read_alike_in_every_format(name, fmt):
    job = read_job(GOOD / name, run_started_at=START)
    assert job.fmt == fmt
    assert job.errors == []
    assert job.n_input == 5
    assert [r.id for r in job.rows] == ["q1", "q2", "q3", "q4", "q5"]
    assert [r.index for r in job.rows] == [0, 1, 2, 3, 4]
    by_id = {r.id: r for r in job.rows}
    assert by_id["q1"].prompt == "What is the capital of France?" and by_id["q1"].messages is None
    assert by_id["q2"].prompt is None
    assert by_id["q2"].messages == [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name three colours."},
    ]
    assert [r.deadline_s for r in job.rows] == [60.0, 30.0, None, 45.5, 90.0]
    assert [r.max_new_tokens for r in job.rows] == [8, 8, 6, 8, 8]
    assert [r.priority for r in job.rows] == [0, 0, 1, 0, 0]
    assert all(r.sampling.is_greedy for r in job.rows)
    if fmt == "openai":
        assert by_id["q4"].messages == [{"role": "user", "content": "Count from one to five."}]
    else:
        assert job.passthrough_columns == ["source"]
        assert [r.passthrough["source"] for r in job.rows] == ["geo", "chat", "gen", "chat", "mt"]
    assert job.file_sha256 == hashlib.sha256((GOOD / name).read_bytes()).hexdigest()


def test_openai_lines_keep_their_url_for_the_writer():
    job = read_job(GOOD / "jobs_openai.jsonl")
    urls = [r.passthrough.get("_openai_url") for r in job.rows]
    assert urls == ["/v1/completions", "/v1/chat/completions", "/v1/completions",
                    "/v1/chat/completions", "/v1/chat/completions"]
    assert "_openai_url" not in job.passthrough_columns


def test_explicit_format_overrides_the_extension(tmp_path):
    path = tmp_path / "job.txt"
    path.write_bytes((GOOD / "jobs.jsonl").read_bytes())
    assert read_job(path, fmt="jsonl").n_input == 5
    assert read_job(path, fmt="JSONL").fmt == "jsonl"
    # Unknown extension, content starts with "{": detected as JSON lines.
    assert read_job(path).fmt == "jsonl"
    openai = tmp_path / "batch.ndjson"
    openai.write_bytes((GOOD / "jobs_openai.jsonl").read_bytes())
    assert read_job(openai).fmt == "openai"
    # Forcing jsonl on an OpenAI file: each line lacks our id, and the reason says what to do.
    job = read_job(openai, fmt="jsonl")
    assert not job.rows and "--format openai" in job.errors[0].reason


def test_unknown_format_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown job format"):
        read_job(GOOD / "jobs.jsonl", fmt="yaml")


# ------------------------------------------------------------------ whole-file refusals


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_job(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="directory"):
        read_job(tmp_path)


def test_unreadable_file_is_refused(tmp_path):
    path = write_jsonl(tmp_path, {"id": "a", "prompt": "x"})
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("file permissions are not enforced for this user (root)")
        with pytest.raises(InputError, match="cannot read"):
            read_job(path)
    finally:
        path.chmod(0o644)


def test_refusals_of_files_that_are_not_job_text(tmp_path):
    utf16 = tmp_path / "u16.jsonl"
    utf16.write_bytes('{"id": "a", "prompt": "x"}\n'.encode("utf-16"))
    with pytest.raises(InputError, match="UTF-16"):
        read_job(utf16)
    gz = tmp_path / "job.jsonl"
    gz.write_bytes(gzip.compress(b'{"id": "a", "prompt": "x"}\n'))
    with pytest.raises(InputError, match="gzip"):
        read_job(gz)
    gz_name = tmp_path / "job.jsonl.gz"
    gz_name.write_bytes(b"x")
    with pytest.raises(InputError, match="compressed"):
        read_job(gz_name)
    parquet_named_jsonl = tmp_path / "really.jsonl"
    parquet_named_jsonl.write_bytes((GOOD / "jobs.parquet").read_bytes())
    with pytest.raises(InputError, match="is a Parquet file"):
        read_job(parquet_named_jsonl)
    # ...and the same file is read when the format is given.
    assert read_job(parquet_named_jsonl, fmt="parquet").n_input == 5
    odd = tmp_path / "notes.txt"
    odd.write_text("hello\n")
    with pytest.raises(InputError, match="cannot tell the job format"):
        read_job(odd)


def test_csv_and_parquet_header_refusals(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    no_id = tmp_path / "no_id.csv"
    no_id.write_text("prompt\nhello\n")
    with pytest.raises(InputError, match="no 'id' column"):
        read_job(no_id)
    upper = tmp_path / "upper.csv"
    upper.write_text("ID,Prompt\na,hello\n")
    with pytest.raises(InputError) as info:
        read_job(upper)
    assert "case-sensitive" in info.value.hint
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("id;prompt\na;hello\n")
    with pytest.raises(InputError) as info:
        read_job(semicolons)
    assert "comma" in info.value.hint
    header_only = tmp_path / "header.csv"
    header_only.write_text("id,prompt\n")
    with pytest.raises(InputError, match="no rows"):
        read_job(header_only)
    dup = tmp_path / "dup.csv"
    dup.write_text("id,prompt,prompt\na,b,c\n")
    with pytest.raises(InputError, match="more than once"):
        read_job(dup)
    pq_path = tmp_path / "no_prompt.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), pq_path)
    with pytest.raises(InputError, match="no 'prompt' or 'messages' column"):
        read_job(pq_path)
    empty_pq = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string())}), empty_pq)
    with pytest.raises(InputError, match="no rows"):
        read_job(empty_pq)
    truncated = tmp_path / "cut.parquet"
    truncated.write_bytes((GOOD / "jobs.parquet").read_bytes()[:200])
    with pytest.raises(InputError, match="Parquet"):
        read_job(truncated)


def test_first_line_array_that_is_just_a_bad_row(tmp_path):
    path = tmp_path / "job.jsonl"
    path.write_text('[1, 2]\n{"id": "a", "prompt": "x"}\n')
    job = read_job(path)
    assert [(e.line, e.code) for e in job.errors] == [(1, "not_an_object")]
    assert [r.index for r in job.rows] == [1]


# ------------------------------------------------------------------ row rules


def test_ids(tmp_path):
    assert one(tmp_path, {"id": 12, "prompt": "x"}).id == "12"
    rejected(one(tmp_path, {"id": True, "prompt": "x"}), "invalid_field", "id")
    rejected(one(tmp_path, {"id": 1.5, "prompt": "x"}), "invalid_field", "id")
    rejected(one(tmp_path, {"id": "  ", "prompt": "x"}), "invalid_field", "id")
    rejected(one(tmp_path, {"id": "a\nb", "prompt": "x"}), "invalid_field", "id")
    rejected(one(tmp_path, {"id": None, "prompt": "x"}), "missing_field", "id")


def test_an_id_stays_taken_by_a_rejected_first_row(tmp_path):
    path = write_jsonl(tmp_path, {"id": "a", "prompt": ""}, {"id": "a", "prompt": "fine"})
    job = read_job(path)
    assert [e.code for e in job.errors] == ["empty_prompt", "duplicate_id"]
    assert not job.rows


def test_messages_rules(tmp_path):
    item = one(tmp_path, {"id": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]}]})
    assert item.messages == [{"role": "user", "content": "hello"}]
    item = one(tmp_path, {"id": "a", "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]})
    assert item.messages[0]["role"] == "system" and item.warnings
    item = one(tmp_path, {"id": "a", "messages": [{"role": "user", "content": "hi", "name": "bob"}]})
    assert item.messages[0]["name"] == "bob"
    for bad in ("hi", {"role": "user"}, [1], [{"role": "user", "content": 5}],
                [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]):
        rejected(one(tmp_path, {"id": "a", "messages": bad}), "invalid_field", "messages")


def test_slo_and_deadline(tmp_path):
    assert one(tmp_path, {"id": "a", "prompt": "x", "slo_s": 5}).deadline_s == 5.0
    assert one(tmp_path, {"id": "a", "prompt": "x"}, default_slo_s=7.5).deadline_s == 7.5
    assert one(tmp_path, {"id": "a", "prompt": "x", "slo_s": 2}, default_slo_s=7.5).deadline_s == 2.0
    later = (START + timedelta(seconds=90)).isoformat()
    assert one(tmp_path, {"id": "a", "prompt": "x", "deadline": later}).deadline_s == pytest.approx(90.0)
    z = "2030-01-01T12:02:00Z"
    assert one(tmp_path, {"id": "a", "prompt": "x", "deadline": z}).deadline_s == pytest.approx(120.0)
    offset = "2030-01-01T13:00:30+01:00"  # 12:00:30 UTC
    assert one(tmp_path, {"id": "a", "prompt": "x", "deadline": offset}).deadline_s == pytest.approx(30.0)
    # A naive deadline is local time.
    local_start = datetime(2030, 1, 1, 12, 0, 0).astimezone()
    job = read_job(write_jsonl(tmp_path, {"id": "a", "prompt": "x", "deadline": "2030-01-01T12:01:00"}),
                   run_started_at=local_start)
    assert job.rows[0].deadline_s == pytest.approx(60.0)
    rejected(one(tmp_path, {"id": "a", "prompt": "x", "deadline": "2029-12-31T00:00:00Z"}), "deadline_passed", "deadline")
    rejected(one(tmp_path, {"id": "a", "prompt": "x", "deadline": 1700000000}), "invalid_field", "deadline")
    for extreme in ("0001-01-01T00:00:00", "9999-12-31T23:59:59"):
        item = one(tmp_path, {"id": "a", "prompt": "x", "deadline": extreme})
        assert isinstance(item, Row) or item.field == "deadline"
    rejected(one(tmp_path, {"id": "a", "prompt": "x", "deadline": "0001-01-01T00:00:00Z"}), "deadline_passed", "deadline")
    rejected(one(tmp_path, {"id": "a", "prompt": "x", "slo_s": "30"}), "invalid_field", "slo_s")
    rejected(one(tmp_path, {"id": "a", "prompt": "x", "slo_s": 1e400}), "invalid_field", "slo_s")


def test_max_new_tokens(tmp_path):
    assert one(tmp_path, {"id": "a", "prompt": "x"}).max_new_tokens == 256
    assert one(tmp_path, {"id": "a", "prompt": "x"}, default_max_new_tokens=9).max_new_tokens == 9
    assert one(tmp_path, {"id": "a", "prompt": "x", "max_new_tokens": 64.0}).max_new_tokens == 64
    too_big = rejected(one(tmp_path, {"id": "a", "prompt": "x", "max_new_tokens": 101}, max_new_tokens_limit=100),
                       "max_new_tokens_too_large", "max_new_tokens")
    assert "100" in too_big.reason
    assert one(tmp_path, {"id": "a", "prompt": "x", "max_new_tokens": 100}, max_new_tokens_limit=100).max_new_tokens == 100
    rejected(one(tmp_path, {"id": "a", "prompt": "x", "max_new_tokens": False}), "invalid_field", "max_new_tokens")


def test_bad_defaults_are_config_errors():
    with pytest.raises(ConfigError):
        read_job(GOOD / "jobs.jsonl", default_max_new_tokens=0)
    with pytest.raises(ConfigError):
        read_job(GOOD / "jobs.jsonl", default_slo_s=-1.0)
    with pytest.raises(ConfigError):
        read_job(GOOD / "jobs.jsonl", default_slo_s=math.inf)


def test_sampling_fields(tmp_path):
    row = one(tmp_path, {"id": "a", "prompt": "x", "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n\n", "END"]})
    assert row.sampling.temperature == 0.7 and row.sampling.top_p == 0.9
    assert row.sampling.seed == 3 and row.sampling.stop == ("\n\n", "END")
    assert not row.sampling.is_greedy
    assert one(tmp_path, {"id": "a", "prompt": "x", "stop": "###"}).sampling.stop == ("###",)
    for field, value in [("temperature", 2.5), ("temperature", -0.1), ("top_p", 0), ("top_p", 1.5),
                         ("seed", -1), ("seed", 1.5), ("stop", ["a", 3]), ("stop", [""]), ("stop", 5)]:
        rejected(one(tmp_path, {"id": "a", "prompt": "x", field: value}), "invalid_field", field)
    rejected(one(tmp_path, {"id": "a", "prompt": "x", "stop": "a\u0000"}), "invalid_text", "stop")


def test_priority_and_passthrough(tmp_path):
    path = write_jsonl(
        tmp_path,
        {"id": "a", "prompt": "x", "zeta": 1, "alpha": {"k": [1, 2]}},
        {"id": "b", "prompt": "y", "priority": -2, "beta": None, "alpha": "s"},
    )
    job = read_job(path)
    assert job.passthrough_columns == ["zeta", "alpha", "beta"]
    assert job.rows[0].passthrough == {"zeta": 1, "alpha": {"k": [1, 2]}}
    assert job.rows[1].priority == -2 and job.rows[1].passthrough == {"beta": None, "alpha": "s"}
    rejected(one(tmp_path, {"id": "a", "prompt": "x", "priority": "high"}), "invalid_field", "priority")
    rejected(one(tmp_path, {"id": "a", "prompt": "x", "note": "bad \ud800"}), "invalid_text", "note")


def test_nested_json_too_deep_is_a_row_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    path.write_text(f'{deep}\n{{"id": "a", "prompt": "x"}}\n{{"id": "b", "x": {deep}}}\n')
    job = read_job(path)
    assert [(e.line, e.code) for e in job.errors] == [(1, "invalid_json"), (3, "invalid_json")]
    assert [r.id for r in job.rows] == ["a"]


# ------------------------------------------------------------------ CSV and OpenAI specifics


def test_csv_values_are_parsed_from_text(tmp_path):
    path = tmp_path / "job.csv"
    path.write_text(
        "id,prompt,slo_s,deadline,max_new_tokens,temperature,seed,stop,priority\n"
        '1,hello, 12 ,,16.0,0.5,7,"[""a"", ""b""]",3\n'
        "2,hi,,2030-01-01T12:00:10Z,,,,[END],\n"
        "3,hey,nan,,,,,,\n"
    )
    job = read_job(path, run_started_at=START)
    a, b = job.rows[0], job.rows[1]
    assert a.id == "1" and a.deadline_s == 12.0 and a.max_new_tokens == 16
    assert a.sampling.temperature == 0.5 and a.sampling.seed == 7 and a.sampling.stop == ("a", "b")
    assert a.priority == 3
    assert b.deadline_s == pytest.approx(10.0) and b.sampling.stop == ("[END]",) and b.max_new_tokens == 256
    assert [(e.line, e.id, e.field, e.code) for e in job.errors] == [(4, "3", "slo_s", "invalid_field")]


def test_csv_non_utf8_line_is_a_row_error(tmp_path):
    path = tmp_path / "job.csv"
    path.write_bytes(b"id,prompt\na,caf\xe9\nb,fine\n")
    job = read_job(path)
    assert [(e.line, e.code) for e in job.errors] == [(2, "invalid_encoding")]
    assert [r.id for r in job.rows] == ["b"]


def test_openai_mapping(tmp_path):
    line = {
        "custom_id": "x1", "method": "POST", "url": "/v1/chat/completions", "tenant": "t9",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 12,
                 "temperature": 0.3, "top_p": 0.5, "seed": 4, "stop": "END", "logprobs": True,
                 "deadline": "2030-01-01T12:00:05Z", "priority": 2},
    }
    job = read_job(write_jsonl(tmp_path, line), run_started_at=START)
    row = job.rows[0]
    assert row.id == "x1" and row.max_new_tokens == 12 and row.priority == 2
    assert row.deadline_s == pytest.approx(5.0)
    assert row.sampling.temperature == 0.3 and row.sampling.stop == ("END",)
    assert row.passthrough == {"tenant": "t9", "_openai_url": "/v1/chat/completions"}
    assert job.passthrough_columns == ["tenant"]
    assert any("logprobs" in w for w in row.warnings)


def test_openai_field_names_in_errors(tmp_path):
    base = {"custom_id": "x", "method": "POST", "url": "/v1/completions"}
    cases = [
        ({"body": {"prompt": "p", "max_tokens": "9"}}, "invalid_field", "body.max_tokens"),
        ({"body": {"prompt": "p", "temperature": 3}}, "invalid_field", "body.temperature"),
        ({"body": {"prompt": ""}}, "empty_prompt", "body.prompt"),
        ({"body": {"model": "m"}}, "missing_field", "body.prompt"),
        ({"body": "text"}, "invalid_field", "body"),
        ({"body": {"prompt": "p", "max_tokens": 3, "max_completion_tokens": 4}}, "invalid_field", "body.max_completion_tokens"),
        ({"body": {"prompt": "p", "slo_s": 3}, "slo_s": 4}, "invalid_field", "slo_s"),
        ({"body": {"prompt": "p"}, "slo_s": -1}, "invalid_field", "slo_s"),
    ]
    for extra, code, field in cases:
        item = one(tmp_path, {**base, **extra}, fmt="openai")
        error = rejected(item, code, field)
        assert error.id == "x"
    missing_id = one(tmp_path, {"method": "POST", "url": "/v1/completions", "body": {"prompt": "p"}}, fmt="openai")
    rejected(missing_id, "missing_field", "custom_id")


def test_csv_with_bom_and_crlf(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfid,prompt,messages\r\na,hello,\r\n\r\n"
                     b'b,,"[{""role"": ""user"", ""content"": [{""type"": ""text"", ""text"": ""hey""}]}]"\r\n')
    job = read_job(path)
    assert [(r.id, r.line) for r in job.rows] == [("a", 2), ("b", 4)]
    assert job.rows[0].prompt == "hello"
    assert job.rows[1].messages == [{"role": "user", "content": "hey"}]


def test_parquet_value_types(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({
        "id": pa.array([1, 2, 3], pa.int32()),
        "messages": ['[{"role": "user", "content": "json text"}]', None, "[oops"],
        "prompt": [None, "plain", None],
        "deadline": pa.array([START + timedelta(seconds=30), None, None], pa.timestamp("s", tz="UTC")),
        "stop": [["a", "b"], None, None],
        "meta": [{"k": 1}, {"k": 2}, None],
    })
    path = tmp_path / "types.parquet"
    pq.write_table(table, path, row_group_size=2)  # two row groups: rows keep their numbers
    job = read_job(path, run_started_at=START)
    assert [r.id for r in job.rows] == ["1", "2"]
    first, second = job.rows
    assert first.messages == [{"role": "user", "content": "json text"}]
    assert first.deadline_s == pytest.approx(30.0) and first.sampling.stop == ("a", "b")
    assert first.passthrough == {"meta": {"k": 1}} and second.prompt == "plain"
    assert [(e.line, e.id, e.field, e.code) for e in job.errors] == [(3, "3", "messages", "invalid_field")]
    assert job.passthrough_columns == ["meta"]
