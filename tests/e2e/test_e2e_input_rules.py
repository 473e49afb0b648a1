"""Input rules end to end (docs/inputs.md): what errors.jsonl and the results say about rows
that did not run (the input row, a null id where there was none, the deadline a rejected row
still had), rows changed with a warning, and OpenAI /v1/completions prompts taken raw."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clirun import run_cli

from uellm_cli.errors import InputError
from uellm_cli.jobs.readers import read_job


def test_error_records_carry_the_row_a_null_id_and_the_deadline(tmp_path, tiny_llama, capsys):
    rows = [
        {"id": "ok", "prompt": "Hello", "slo_s": 600, "max_new_tokens": 3},
        {"prompt": "no id here", "slo_s": 500},  # rejected: missing id
        {"id": "hot", "prompt": "Hi", "slo_s": 400, "temperature": 9},  # rejected: temperature
        {"id": "long", "prompt": "the sea is wide " * 400, "slo_s": 300},  # rejected: too long
    ]
    job = tmp_path / "job.jsonl"
    job.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    res = run_cli(capsys, "run", job, "--model", tiny_llama, "--out", out, "-q", "--no-history")
    assert res.code == 3, res.err
    errors = [json.loads(ln) for ln in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["row"], e["id"], e["field"]) for e in errors] == [
        (1, None, "id"), (2, "hot", "temperature"), (3, "long", "prompt")]
    results = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["id"] for r in results] == ["ok", None, "hot", "long"]
    assert [r["deadline_s"] for r in results] == [600.0, 500.0, 400.0, 300.0]
    assert [r["slo_met"] for r in results][1:] == [False, False, False]
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert metrics["rows_with_deadline"] == 4 and metrics["slo_met"] == 1


def test_every_wrong_parquet_column_type_is_named(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": [1.5], "prompt": [5], "messages": [3]}), bad)
    with pytest.raises(InputError) as err:
        read_job(bad)
    text = str(err.value)
    assert "'id' has type double" in text and "'prompt' has type int64" in text
    assert "'messages' has type int64" in text and "\n" not in text


def test_an_integer_id_is_kept_as_text_with_a_warning(tmp_path):
    job = tmp_path / "job.jsonl"
    job.write_text(json.dumps({"id": 7, "prompt": "Hi"}) + "\n" + json.dumps({"id": "s", "prompt": "Hi"}) + "\n")
    rows = read_job(job).rows
    assert rows[0].id == "7" and any("is a number" in w for w in rows[0].warnings)
    assert rows[1].warnings == []


def test_completions_rows_get_no_chat_template(tmp_path, tiny_llama):
    from uellm_cli.engine.hf_engine import HFEngine
    from uellm_cli.engine.models import load_tokenizer, resolve_model

    lines = [
        {"custom_id": "c", "method": "POST", "url": "/v1/completions",
         "body": {"model": "m", "prompt": "Once upon a time", "max_tokens": 4}},
        {"custom_id": "m", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": [{"role": "user", "content": "Once upon a time"}]}},
    ]
    job = tmp_path / "job.jsonl"
    job.write_text("".join(json.dumps(x) + "\n" for x in lines))
    completion, chat = read_job(job, fmt="openai").rows
    tok = load_tokenizer(resolve_model(str(tiny_llama)))
    encoder = HFEngine(tok)
    assert encoder.has_chat_template
    assert encoder.encode(completion) == tok("Once upon a time", add_special_tokens=True)["input_ids"]
    assert len(encoder.encode(chat)) > len(encoder.encode(completion))  # the template's tokens
