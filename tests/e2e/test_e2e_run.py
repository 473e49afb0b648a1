"""`uellm run` end to end through the real entry point, on tiny random models."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from clirun import run_cli

GOOD_ROWS = [
    {"id": "a", "prompt": "What is the capital of France?", "slo_s": 600, "max_new_tokens": 6},
    {"id": "b", "messages": [{"role": "user", "content": "Write a poem about the sea."}],
     "slo_s": 600, "max_new_tokens": 9, "team": "x"},
    {"id": "c", "prompt": "List three colours", "max_new_tokens": 4, "team": "y"},
    {"id": "d", "prompt": "Explain why the sky is blue.", "slo_s": 300, "max_new_tokens": 12},
    {"id": "e", "prompt": "Hello world", "slo_s": 600, "max_new_tokens": 5, "priority": 1},
]


def _write_jsonl(path, rows, extra_lines=()):
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _results(out, name="results.parquet"):
    return pq.read_table(out / name).to_pylist()


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "sys.argv = ['uellm', '--help']\n"
        "from uellm_cli import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'accelerate', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "run" in proc.stdout


def test_good_and_bad_rows(tmp_path, tiny_llama, capsys):
    job = _write_jsonl(tmp_path / "job.jsonl", GOOD_ROWS, extra_lines=[
        '{"id": "broken", "prompt": ',
        json.dumps({"id": "neg", "prompt": "hi", "slo_s": -4}),
        json.dumps({"id": "a", "prompt": "duplicate id"}),
    ])
    out = tmp_path / "out"
    res = run_cli(capsys, "run", job, "--model", tiny_llama, "--out", out, "-q")
    assert res.code == 3, res.err  # finished, some rows rejected
    assert "Traceback" not in res.err
    rows = _results(out)
    assert [r["id"] for r in rows][:5] == ["a", "b", "c", "d", "e"]
    assert len(rows) == 8  # one result per input row, in input order
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["rejected"] * 3
    for r in rows[:5]:
        assert 1 <= r["output_tokens"] <= next(g for g in GOOD_ROWS if g["id"] == r["id"])["max_new_tokens"]
        assert r["finish_reason"] in ("stop", "length")
        assert r["latency_s"] == r["finished_s"] and r["finished_s"] >= r["started_s"] > 0
    assert rows[1]["team"] == "x" and rows[0]["team"] is None  # passthrough column
    assert rows[2]["deadline_s"] is None and rows[2]["slo_met"] is None
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {e["line"] for e in errors} == {6, 7, 8}
    assert all(e["file"] and e["reason"] for e in errors)
    for name in ("report.json", "manifest.json", "report.html"):
        assert (out / name).exists(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == "complete"


@pytest.mark.parametrize("fmt", ["csv", "parquet", "openai"])
def test_every_input_format(tmp_path, tiny_llama, capsys, fmt):
    import pandas as pd

    plain = [r for r in GOOD_ROWS if "prompt" in r]
    if fmt == "csv":
        job = tmp_path / "job.csv"
        pd.DataFrame(plain).to_csv(job, index=False)
    elif fmt == "parquet":
        job = tmp_path / "job.parquet"
        pd.DataFrame(plain).to_parquet(job)
    else:
        job = tmp_path / "batch.jsonl"
        _write_jsonl(job, [
            {"custom_id": r["id"], "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": r["prompt"]}],
                      "max_tokens": r["max_new_tokens"]}}
            for r in plain
        ])
    out = tmp_path / "out"
    args = ["run", job, "--model", tiny_llama, "--out", out, "-q", "--slo", "900"]
    if fmt == "openai":
        args += ["--output-format", "openai"]
    res = run_cli(capsys, *args)
    assert res.code == 0, res.err
    if fmt == "openai":
        lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        assert [x["custom_id"] for x in lines] == [r["id"] for r in plain]
        assert all(x["response"]["status_code"] == 200 for x in lines)
    else:
        assert [r["id"] for r in _results(out)] == [r["id"] for r in plain]


def test_batched_outputs_equal_one_row_at_a_time(tmp_path, tiny_llama, capsys):
    job = _write_jsonl(tmp_path / "job.jsonl", [r for r in GOOD_ROWS])
    a, b = tmp_path / "batched", tmp_path / "single"
    assert run_cli(capsys, "run", job, "--model", tiny_llama, "--out", a, "-q", "--slo", "900").code == 0
    assert run_cli(capsys, "run", job, "--model", tiny_llama, "--out", b, "-q", "--slo", "900",
                   "--max-batch-size", "1").code == 0
    ra, rb = _results(a), _results(b)
    assert max(r["batch"] for r in ra) < max(r["batch"] for r in rb)  # really batched vs not
    assert [r["output_text"] for r in ra] == [r["output_text"] for r in rb]
    assert [r["output_tokens"] for r in ra] == [r["output_tokens"] for r in rb]

    # and both equal plain transformers generate, one row at a time, greedy
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    for row, res in zip(GOOD_ROWS, ra, strict=False):
        msgs = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        gen = model.generate(**ids, max_new_tokens=row["max_new_tokens"], do_sample=False)
        new = gen[0, ids["input_ids"].shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id) + 1]
        assert res["output_tokens"] == len(new)
        assert res["output_text"] == tok.decode(new, skip_special_tokens=True)


def test_other_architecture_runs(tmp_path, tiny_qwen2, capsys):
    job = _write_jsonl(tmp_path / "job.jsonl", GOOD_ROWS[:3])
    res = run_cli(capsys, "run", job, "--model", tiny_qwen2, "--out", tmp_path / "o", "-q",
                  "--output-format", "jsonl", "--slo", "900")
    assert res.code == 0, res.err
    rows = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok"] * 3


def test_prompt_longer_than_context_is_rejected_and_budget_capped(tmp_path, tiny_llama, capsys):
    long_prompt = "the sea is wide and blue " * 200  # far more than the 512-token context
    job = _write_jsonl(tmp_path / "job.jsonl", [
        {"id": "long", "prompt": long_prompt, "max_new_tokens": 4},
        {"id": "big-budget", "prompt": "Hello", "max_new_tokens": 5000},
    ])
    out = tmp_path / "o"
    res = run_cli(capsys, "run", job, "--model", tiny_llama, "--out", out, "-q")
    assert res.code == 3
    rows = _results(out)
    assert rows[0]["status"] == "rejected" and rows[0]["error_code"] == "prompt_too_long"
    assert rows[1]["status"] == "ok" and "capped" in rows[1]["warnings"]


def test_refused_files_exit_2_before_loading_a_model(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = run_cli(capsys, "run", empty, "--model", "/nonexistent/model", "--out", tmp_path / "o")
    assert res.code == 2
    assert "empty.jsonl" in res.err and "Traceback" not in res.err
    res = run_cli(capsys, "run", tmp_path / "missing.jsonl", "--out", tmp_path / "o")
    assert res.code == 2 and "Traceback" not in res.err


def test_unknown_alias_says_where_to_put_weights(tmp_path, capsys):
    job = _write_jsonl(tmp_path / "job.jsonl", GOOD_ROWS[:1])
    res = run_cli(capsys, "run", job, "--model", "llama-7b", "--out", tmp_path / "o")
    assert res.code == 2
    assert "llama-7b" in res.err and "models" in res.err and "Traceback" not in res.err


@pytest.mark.slow
def test_default_model_answers(tmp_path, capsys):
    job = _write_jsonl(tmp_path / "job.jsonl", [
        {"id": "1", "prompt": "What is the capital of France?", "max_new_tokens": 24},
        {"id": "2", "prompt": "Name a colour of the sky.", "max_new_tokens": 24},
        {"id": "3", "messages": [{"role": "user", "content": "Say hello."}], "max_new_tokens": 24},
    ])
    res = run_cli(capsys, "run", job, "--out", tmp_path / "o", "-q", "--slo", "3600")
    assert res.code == 0, res.err
    rows = _results(tmp_path / "o")
    assert all(r["status"] == "ok" and r["output_text"].strip() for r in rows)
    assert "paris" in rows[0]["output_text"].lower()
