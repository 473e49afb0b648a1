"""Every file of the malformed corpus gives row errors or a whole-file refusal, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from uellm_cli.errors import InputError
from uellm_cli.jobs.readers import read_job
from uellm_cli.jobs.schema import Job

CORPUS = Path(__file__).parent.parent / "data" / "malformed"

# file -> (format, [(line, id, field, code), ...] for the rejected rows, ids of the valid rows)
ROW_ERRORS: dict[str, tuple[str, list[tuple], list[str]]] = {
    "broken_json_middle.jsonl": (
        "jsonl",
        [(3, None, None, "invalid_json"), (5, None, None, "invalid_json")],
        ["b1", "b2", "b4", "b6"],
    ),
    "missing_prompt.jsonl": (
        "jsonl",
        [
            (1, "m1", "prompt", "missing_field"),
            (2, "m2", "prompt", "empty_prompt"),
            (3, "m3", "prompt", "empty_prompt"),
            (4, "m4", "messages", "empty_prompt"),
            (5, "m5", "prompt", "empty_prompt"),
            (6, "m6", "prompt", "invalid_field"),
            (7, "m7", "prompt", "invalid_field"),
            (8, "m8", "messages", "invalid_field"),
            (9, "m9", "messages", "empty_prompt"),
            (10, None, "id", "missing_field"),
        ],
        ["m11"],
    ),
    "bad_slo.jsonl": (
        "jsonl",
        [
            (1, "s1", "slo_s", "invalid_field"),
            (2, "s2", "slo_s", "invalid_field"),
            (3, "s3", "slo_s", "invalid_field"),
            (4, "s4", "slo_s", "invalid_field"),
            (5, "s5", "deadline", "deadline_passed"),
            (6, "s6", "deadline", "invalid_field"),
            (7, "s7", "deadline", "invalid_field"),
            (8, "s8", "slo_s", "invalid_field"),
        ],
        ["s9"],
    ),
    "duplicate_ids.jsonl": (
        "jsonl",
        [(3, "d1", "id", "duplicate_id"), (5, "7", "id", "duplicate_id")],
        ["d1", "d2", "7", "d3"],
    ),
    "absurd_max_new_tokens.jsonl": (
        "jsonl",
        [
            (1, "t1", "max_new_tokens", "max_new_tokens_too_large"),
            (2, "t2", "max_new_tokens", "invalid_field"),
            (3, "t3", "max_new_tokens", "invalid_field"),
            (4, "t4", "max_new_tokens", "invalid_field"),
            (5, "t5", "max_new_tokens", "invalid_field"),
            (6, "t6", "max_new_tokens", "invalid_field"),
            (8, "t8", "max_new_tokens", "invalid_field"),
        ],
        ["t7"],
    ),
    "unicode_text.jsonl": (
        "jsonl",
        [
            (1, "u1", "prompt", "invalid_text"),
            (4, "u4", "messages", "invalid_text"),
            (5, "u5", "prompt", "invalid_text"),
        ],
        ["u2", "u3", "u6"],
    ),
    "bom_crlf.jsonl": ("jsonl", [(5, "c3", "slo_s", "invalid_field")], ["c1", "c2", "c4"]),
    "non_utf8.jsonl": (
        "jsonl",
        [(2, None, None, "invalid_encoding"), (3, None, None, "invalid_encoding")],
        ["n1", "n4"],
    ),
    "openai_bad_url.jsonl": (
        "openai",
        [
            (2, "o2", "url", "unsupported_url"),
            (3, "o3", "method", "unsupported_method"),
            (4, "o4", "body.messages", "invalid_field"),
            (5, "o5", "body.prompt", "invalid_field"),
            (6, "o6", "body.max_tokens", "invalid_field"),
            (7, "o7", "body.n", "invalid_field"),
        ],
        ["o1", "o8"],
    ),
    "bad_rows.csv": (
        "csv",
        [
            (3, None, "id", "missing_field"),
            (4, "r3", "slo_s", "invalid_field"),
            (5, "r4", "messages", "invalid_field"),
            (6, "r5", None, "invalid_field"),
            (7, "r6", "prompt", "empty_prompt"),
            (10, "r8", "max_new_tokens", "invalid_field"),
        ],
        ["r1", "r7", "r9"],
    ),
}

# file -> words the refusal must contain
REFUSED: dict[str, str] = {
    "empty.jsonl": "is empty",
    "blank_lines_only.jsonl": "blank lines",
    "json_array.json": "this is a JSON array; write one object per line (JSONL)",
    "json_array_one_line.jsonl": "this is a JSON array; write one object per line (JSONL)",
    "pretty_object.json": "is a JSON object",
    "binary_garbage.jsonl": "binary",
    "not_parquet.parquet": "not a Parquet file",
    "no_prompt_column.csv": "no 'prompt' or 'messages' column",
}


def test_every_corpus_file_has_an_expectation():
    names = {p.name for p in CORPUS.iterdir()}
    assert names == set(ROW_ERRORS) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(ROW_ERRORS))
def test_corpus_row_errors(name):
    fmt, expected, valid_ids = ROW_ERRORS[name]
    path = CORPUS / name
    job = read_job(path)
    assert isinstance(job, Job)
    assert job.fmt == fmt
    got = [(e.line, e.id, e.field, e.code) for e in job.errors]
    assert got == expected
    assert [r.id for r in job.rows] == valid_ids
    assert job.n_input == len(job.rows) + len(job.errors)
    assert sorted([r.index for r in job.rows] + [e.index for e in job.errors]) == list(range(job.n_input))
    for error in job.errors:
        assert error.file == str(path)
        assert error.reason and "\n" not in error.reason
        one = error.one_line()
        assert one.startswith(f"{path}:{error.line}") and one.endswith(f"[{error.code}]")


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_corpus_refusals(name):
    path = CORPUS / name
    with pytest.raises(InputError) as info:
        read_job(path)
    message = str(info.value)
    assert REFUSED[name] in message
    assert str(path) in message
    assert "\n" not in message
    assert info.value.hint


def test_corpus_files_really_have_the_bytes_they_claim():
    """Guard against an editor or git setting normalising the corpus away."""
    bom = (CORPUS / "bom_crlf.jsonl").read_bytes()
    assert bom.startswith(b"\xef\xbb\xbf") and b"\r\n" in bom
    raw = (CORPUS / "non_utf8.jsonl").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert (CORPUS / "empty.jsonl").stat().st_size == 0
    assert b"\r\n" in (CORPUS / "bad_rows.csv").read_bytes()


def test_reasons_quote_the_bad_value():
    job = read_job(CORPUS / "bad_slo.jsonl")
    by_id = {e.id: e for e in job.errors}
    assert "'soon'" in by_id["s2"].reason and "slo_s" in by_id["s2"].reason
    assert "-5" in by_id["s1"].reason
    assert "before the run started" in by_id["s5"].reason
    job = read_job(CORPUS / "duplicate_ids.jsonl")
    assert "line 1" in job.errors[0].reason  # points at the row that keeps the id


def test_emoji_and_rtl_text_survive_unchanged():
    job = read_job(CORPUS / "unicode_text.jsonl")
    by_id = {r.id: r for r in job.rows}
    assert "😀🎉" in by_id["u2"].prompt
    assert by_id["u3"].prompt.startswith("ترجم")
    assert "עברית" in by_id["u6"].prompt and "中文" in by_id["u6"].prompt


def test_bom_and_crlf_do_not_leak_into_values():
    job = read_job(CORPUS / "bom_crlf.jsonl")
    assert job.rows[0].id == "c1"
    assert [r.line for r in job.rows] == [1, 3, 6]
    assert all(not r.prompt.endswith("\r") for r in job.rows)


def test_csv_multiline_cell_keeps_line_numbers():
    job = read_job(CORPUS / "bad_rows.csv")
    by_id = {r.id: r for r in job.rows}
    assert by_id["r7"].line == 8
    assert by_id["r7"].prompt == "a prompt\r\nover two lines"
    assert by_id["r9"].line == 12  # after the two-line cell and a blank line
    assert by_id["r9"].deadline_s == 1.5 and by_id["r9"].max_new_tokens == 3
    assert job.passthrough_columns == ["note"]


def test_long_prompt_is_read_not_rejected(tmp_path):
    prompt = "word " * 40_000  # 200k characters
    path = tmp_path / "long.jsonl"
    path.write_text(f'{{"id": "long", "prompt": "{prompt}"}}\n{{"id": "short", "prompt": "hi"}}\n')
    job = read_job(path)
    assert not job.errors
    assert len(job.rows[0].prompt) == 200_000
    csv_path = tmp_path / "long.csv"
    csv_path.write_text(f"id,prompt\nlong,{prompt}\n")
    assert len(read_job(csv_path).rows[0].prompt) == 200_000


def test_parquet_with_wrong_column_types(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    # slo_s as text: a number in text is read, text that is no number is a row error.
    table = pa.table({
        "id": ["w1", "w2", "w3", "w4"],
        "prompt": ["a", "b", "c", "d"],
        "slo_s": ["12.5", "soon", None, "-1"],
        "max_new_tokens": [1.0, 2.5, None, 3.0],
    })
    path = tmp_path / "types.parquet"
    pq.write_table(table, path)
    job = read_job(path)
    assert [(e.line, e.id, e.field, e.code) for e in job.errors] == [
        (2, "w2", "slo_s", "invalid_field"),
        (4, "w4", "slo_s", "invalid_field"),
    ]
    ok = {r.id: r for r in job.rows}
    assert ok["w1"].deadline_s == 12.5 and ok["w1"].max_new_tokens == 1
    assert ok["w3"].deadline_s is None and ok["w3"].max_new_tokens == 256

    # A prompt column of ints can never be used: the whole file is refused, naming the column.
    bad = tmp_path / "int_prompt.parquet"
    pq.write_table(pa.table({"id": ["x"], "prompt": [5]}), bad)
    with pytest.raises(InputError, match="column 'prompt' has type int64"):
        read_job(bad)
    bad_id = tmp_path / "float_id.parquet"
    pq.write_table(pa.table({"id": [1.5], "prompt": ["p"]}), bad_id)
    with pytest.raises(InputError, match="column 'id' has type double"):
        read_job(bad_id)
