"""A resumed run's report covers the whole job, and a resume with nothing left loads no model."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from clirun import run_cli

from uellm_cli.run import pipeline

ROWS = [{"id": f"r{i}", "prompt": f"Tell me about the number {i}", "slo_s": 600,
         "max_new_tokens": 4 + i % 3} for i in range(6)]


@pytest.fixture()
def job(tmp_path):
    path = tmp_path / "job.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _run(capsys, job, out, model, *extra):
    return run_cli(capsys, "run", job, "--model", model, "--out", out, "--engine", "hf",
                   "--max-batch-size", "2", "--no-history", *extra)


def _metrics(out):
    return json.loads((out / "report.json").read_text())["metrics"]


def test_a_resume_with_nothing_left_loads_no_model_and_reports_the_job(tmp_path, job, tiny_llama,
                                                                       capsys, monkeypatch):
    out = tmp_path / "out"
    first = _run(capsys, job, out, tiny_llama)
    assert first.code == 0, first.err
    before = _metrics(out)

    def no_run(*_a, **_k):
        raise AssertionError("the model was loaded for a job with nothing left to run")

    monkeypatch.setattr(pipeline, "run_plan", no_run)
    again = _run(capsys, job, out, tiny_llama, "--resume")
    assert again.code == 0, again.err
    assert "nothing left to run" in again.err and "generating" not in again.err
    after = _metrics(out)
    assert after["ok"] == len(ROWS) and after["batches"] == before["batches"]
    # rebuilt from the rows' times, which the batch times enclose to within a millisecond
    assert after["makespan_s"] == pytest.approx(before["makespan_s"], rel=0.02)
    assert after["throughput_tok_s"] == pytest.approx(before["throughput_tok_s"], rel=0.02)
    assert json.loads((out / "manifest.json").read_text())["state"] == "complete"


def test_a_resumed_run_reports_every_attempt(tmp_path, job, tiny_llama, capsys):
    out = tmp_path / "out"
    assert _run(capsys, job, out, tiny_llama).code == 0
    log = out / "results.log.jsonl"
    lines = log.read_text().splitlines()
    kept = [json.loads(ln) for ln in lines[:2]]  # the first batch, as if killed after it
    log.write_text("".join(ln + "\n" for ln in lines[:2]))
    earlier_span = max(r["finished_s"] for r in kept) - min(r["started_s"] for r in kept)
    assert all(r["_attempt"] == 0 for r in kept)

    res = _run(capsys, job, out, tiny_llama, "--resume")
    assert res.code == 0, res.err
    m = _metrics(out)
    assert m["ok"] == len(ROWS)
    records = [json.loads(ln) for ln in log.read_text().splitlines()]
    second = [r for r in records if r["_attempt"] == 1]
    assert len(second) == len(ROWS) - 2
    this_span = max(r["finished_s"] for r in second) - min(r["started_s"] for r in second)
    assert m["makespan_s"] == pytest.approx(earlier_span + this_span, rel=0.02)
    assert m["batches"] == 1 + len({r["batch"] for r in second})
    tokens = sum(r["output_tokens"] for r in records)
    assert m["throughput_tok_s"] == pytest.approx(tokens / m["makespan_s"], rel=1e-6)
    # the attempt tag never becomes a results column
    assert "_attempt" not in pq.read_table(out / "results.parquet").column_names
