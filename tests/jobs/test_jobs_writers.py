"""Result log (append, torn tail, last record wins) and the final results/errors files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from uellm_cli.errors import ConfigError
from uellm_cli.jobs import writers
from uellm_cli.jobs.results import RESULT_FIELDS, RowResult
from uellm_cli.jobs.schema import RowError
from uellm_cli.jobs.writers import (
    ResultLog,
    execution_error,
    read_log,
    result_column_types,
    write_errors,
    write_results,
)

ODD_TEXT = "a\u2028b\x85c\r\nd \U0001f600 \u05e9\u05dc\u05d5\u05dd \x00 end"


def _ok(i: int, text: str = "hi", **pt) -> RowResult:
    return RowResult(index=i, id=f"r{i}", status="ok", output_text=text, finish_reason="stop",
                     prompt_tokens=5 + i, output_tokens=3, predicted_output_tokens=4,
                     replica=0, batch=i // 2, started_s=0.5, finished_s=1.0 + i,
                     latency_s=1.0 + i, deadline_s=10.0, slo_met=True, passthrough=dict(pt))


def _err(i: int) -> RowResult:
    return RowResult(index=i, id=f"r{i}", status="error", error_code="oom",
                     error_message="out of memory even alone")


def _rejected(i: int) -> RowResult:
    return RowResult(index=i, id=f"r{i}", status="rejected", error_code="prompt_too_long",
                     error_message="prompt has 9000 tokens, context is 2048",
                     warnings=["x"])


# ---------------------------------------------------------------- result log


def test_append_and_load_roundtrip(tmp_path):
    results = [_ok(0, ODD_TEXT, topic="t\u00e9"), _err(1), _rejected(2)]
    with ResultLog(tmp_path) as log:
        log.append(results[:2])
        # visible to another reader as soon as append returns, before close
        assert set(ResultLog.load(tmp_path)) == {0, 1}
        log.append(results[2:])
    loaded = ResultLog.load(tmp_path / writers.LOG_NAME)
    assert loaded == {r.index: r.to_record() for r in results}
    assert loaded[0]["output_text"] == ODD_TEXT
    assert loaded[0]["topic"] == "t\u00e9"
    # one JSON object per line, even with U+2028 / NEL / CRLF in the text
    lines = (tmp_path / writers.LOG_NAME).read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4


def test_missing_log_is_empty(tmp_path):
    assert ResultLog.load(tmp_path) == {}


def test_torn_last_line_is_ignored_and_cut_on_next_open(tmp_path):
    with ResultLog(tmp_path) as log:
        log.append([_ok(0), _ok(1)])
    partial = b'{"index": 2, "id": "r2", "status": "o'
    with open(tmp_path / writers.LOG_NAME, "ab") as f:
        f.write(partial)
    contents = read_log(tmp_path)
    assert set(contents.records) == {0, 1}
    assert contents.torn_bytes == len(partial)

    log = ResultLog(tmp_path).open()
    assert log.truncated_bytes == len(partial)
    log.append([_ok(3)])
    log.close()
    raw = (tmp_path / writers.LOG_NAME).read_bytes()
    assert partial not in raw
    assert [json.loads(x)["index"] for x in raw.splitlines()] == [0, 1, 3]
    assert read_log(tmp_path).torn_bytes == 0


def test_a_complete_json_without_newline_counts_as_torn(tmp_path):
    # append() writes the newline with the record, so a record without it was cut short
    (tmp_path / writers.LOG_NAME).write_bytes(json.dumps(_ok(0).to_record()).encode())
    assert ResultLog.load(tmp_path) == {}
    with ResultLog(tmp_path) as log:
        log.append([_ok(1)])
    assert set(ResultLog.load(tmp_path)) == {1}


def test_duplicate_index_keeps_the_last_record(tmp_path):
    with ResultLog(tmp_path) as log:
        log.append([_err(1), _ok(0)])
    with ResultLog(tmp_path) as log:  # a --retry-errors rerun
        log.append([_ok(1, "second try")])
    loaded = ResultLog.load(tmp_path)
    assert loaded[1]["status"] == "ok" and loaded[1]["output_text"] == "second try"
    assert len(loaded) == 2


def test_garbage_lines_are_counted_not_fatal(tmp_path):
    good = json.dumps(_ok(0).to_record())
    (tmp_path / writers.LOG_NAME).write_text(f"{good}\nnot json\n[1, 2]\n{{\"index\": \"x\"}}\n")
    contents = read_log(tmp_path)
    assert set(contents.records) == {0} and contents.bad_lines == 3


def test_append_refuses_a_record_without_index(tmp_path):
    with ResultLog(tmp_path) as log, pytest.raises(ValueError):
        log.append_records([{"id": "x"}])


# ---------------------------------------------------------------- results file

EXPECTED_TYPES = {
    "row": pa.int64(), "id": pa.string(), "status": pa.string(), "output_text": pa.string(),
    "finish_reason": pa.string(), "prompt_tokens": pa.int64(), "output_tokens": pa.int64(),
    "predicted_output_tokens": pa.int64(), "replica": pa.int64(), "batch": pa.int64(),
    "started_s": pa.float64(), "finished_s": pa.float64(), "latency_s": pa.float64(),
    "deadline_s": pa.float64(), "slo_met": pa.bool_(), "error_code": pa.string(),
    "error_message": pa.string(), "warnings": pa.string(),
}


def test_every_result_field_has_a_column_type():
    types = result_column_types()
    assert list(types) == ["row", *RESULT_FIELDS]
    assert set(types.values()) <= {"string", "int64", "float64", "bool"}


def test_parquet_schema_is_typed_even_when_columns_are_all_null(tmp_path):
    records = [_rejected(1).to_record(), _err(0).to_record()]
    path = write_results(tmp_path, records, fmt="parquet", passthrough_columns=["note"])
    assert path == tmp_path / "results.parquet"
    table = pq.read_table(path)
    for name, typ in EXPECTED_TYPES.items():
        assert table.schema.field(name).type == typ, name
    assert table.schema.field("note").type == pa.string()  # all-null passthrough
    assert table.column_names[: len(EXPECTED_TYPES)] == list(EXPECTED_TYPES)
    assert table.column("row").to_pylist() == [0, 1]
    assert table.column("warnings").to_pylist() == [None, "x"]


def test_parquet_rows_in_input_order_with_passthrough(tmp_path):
    results = [_ok(2, category="b", score=2, mixed="x", row=7),
               _rejected(1),
               _ok(0, ODD_TEXT, category="a", score=1, mixed=1, row=9, _openai_url="/v1/x")]
    records = [r.to_record() for r in results]
    path = write_results(tmp_path, records, passthrough_columns=["category", "score", "mixed",
                                                                 "row", "_openai_url"])
    table = pq.read_table(path)
    cols = table.to_pydict()
    assert cols["row"] == [0, 1, 2]
    assert cols["id"] == ["r0", "r1", "r2"]
    assert cols["status"] == ["ok", "rejected", "ok"]
    assert cols["output_text"][0] == ODD_TEXT
    assert cols["category"] == ["a", None, "b"]
    assert table.schema.field("score").type == pa.int64()
    assert cols["score"] == [1, None, 2]
    # mixed types do not fail the write: stored as JSON text
    assert table.schema.field("mixed").type == pa.string()
    assert [None if v is None else json.loads(v) for v in cols["mixed"]] == [1, None, "x"]
    # a passthrough named "row" cannot hide the row column
    assert cols["input_row"] == [9, None, 7]
    assert "_openai_url" not in cols and "index" not in cols
    assert table.column_names[: len(EXPECTED_TYPES)] == list(EXPECTED_TYPES)


def test_passthrough_columns_are_found_when_not_given(tmp_path):
    records = [_ok(0, tag="a").to_record(), _ok(1, extra=3.5).to_record()]
    cols = pq.read_table(write_results(tmp_path, records)).to_pydict()
    assert cols["tag"] == ["a", None] and cols["extra"] == [None, 3.5]


def test_last_record_of_an_index_wins_in_results(tmp_path):
    records = [_err(0).to_record(), _ok(0, "retried").to_record()]
    cols = pq.read_table(write_results(tmp_path, records)).to_pydict()
    assert cols["status"] == ["ok"] and cols["output_text"] == ["retried"]


def test_jsonl_results(tmp_path):
    records = [_ok(1, ODD_TEXT, category="b", score=float("nan")).to_record(),
               _rejected(0).to_record(), _ok(2, "lone \ud800 surrogate").to_record()]
    path = write_results(tmp_path, records, fmt="jsonl",
                         passthrough_columns=["category", "score"])
    assert path == tmp_path / "results.jsonl"
    # str.splitlines() also splits on U+2028 and NEL: the file must survive it
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [x["row"] for x in lines] == [0, 1, 2]
    assert list(lines[1]) == list(EXPECTED_TYPES) + ["category", "score"]
    assert lines[1]["output_text"] == ODD_TEXT and lines[1]["category"] == "b"
    assert lines[1]["score"] is None  # NaN is not JSON
    assert "\U0001f600" in path.read_text(encoding="utf-8")  # readable, not \u-escaped
    assert lines[2]["output_text"] == "lone \ud800 surrogate"
    assert lines[0]["status"] == "rejected" and lines[0]["error_code"] == "prompt_too_long"


def test_openai_output_format(tmp_path):
    records = [
        _ok(0, "chat answer", _openai_url="/v1/chat/completions").to_record(),
        _ok(1, "plain text", _openai_url="/v1/completions").to_record(),
        _err(2).to_record(),
        _rejected(3).to_record(),
    ]
    path = write_results(tmp_path, records, fmt="openai", model_name="tiny", created=1234)
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [x["custom_id"] for x in lines] == ["r0", "r1", "r2", "r3"]
    assert len({x["id"] for x in lines}) == 4
    assert all(x["id"].startswith("batch_req_") for x in lines)

    chat = lines[0]
    assert chat["error"] is None and chat["response"]["status_code"] == 200
    body = chat["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["created"] == 1234
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "chat answer"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}

    comp = lines[1]["response"]["body"]
    assert comp["object"] == "text_completion" and comp["choices"][0]["text"] == "plain text"
    assert "message" not in comp["choices"][0]

    for failed, code in ((lines[2], "oom"), (lines[3], "prompt_too_long")):
        assert failed["response"] is None
        assert failed["error"]["code"] == code and failed["error"]["message"]


def test_switching_format_removes_the_other_results_file(tmp_path):
    records = [_ok(0).to_record()]
    write_results(tmp_path, records, fmt="parquet")
    write_results(tmp_path, records, fmt="jsonl")
    assert not (tmp_path / "results.parquet").exists()
    assert (tmp_path / "results.jsonl").exists()


def test_unknown_format_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        write_results(tmp_path, [], fmt="csv")


def test_failed_write_leaves_the_previous_results(tmp_path, monkeypatch):
    first = write_results(tmp_path, [_ok(0, "old").to_record()])
    before = first.read_bytes()

    def boom(table, where, **kw):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        write_results(tmp_path, [_ok(0, "new").to_record()])
    assert first.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet"]


# ---------------------------------------------------------------- errors.jsonl


def test_errors_file_fields_and_order(tmp_path):
    failed = _err(3).to_record()
    errors = [
        execution_error(failed, file="jobs.jsonl", line=4),
        RowError(file="jobs.jsonl", line=2, id="r1", field="slo_s", code="invalid",
                 reason="slo_s must be a positive number", index=1),
        {"file": "jobs.jsonl", "line": 7, "id": None, "field": "id", "code": "missing",
         "reason": "id is required"},
    ]
    path = write_errors(tmp_path, errors)
    assert path == tmp_path / "errors.jsonl"
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    for x in lines:
        assert {"file", "line", "id", "field", "code", "reason"} <= set(x)
    assert [x["row"] for x in lines] == [1, 3, None]
    assert lines[0]["field"] == "slo_s" and lines[0]["line"] == 2
    assert lines[1] == {"row": 3, "file": "jobs.jsonl", "line": 4, "id": "r3", "field": None,
                        "code": "oom", "reason": "out of memory even alone"}


def test_errors_file_exists_even_when_empty(tmp_path):
    path = write_errors(tmp_path, [])
    assert path.exists() and path.read_bytes() == b""
