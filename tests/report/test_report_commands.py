"""`uellm report` and `uellm history` through CliRunner on a fresh Typer app."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from uellm_cli import store
from uellm_cli.commands import history, report
from uellm_cli.errors import InputError
from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.report.metrics import summarize
from uellm_cli.report.rundir import write_reports


@pytest.fixture
def app():
    a = typer.Typer()
    report.register(a)
    history.register(a)
    return a


def _results():
    rows = [RowResult(index=i, id=f"q{i}", status="ok", output_tokens=4 + i, predicted_output_tokens=5,
                      replica=0, batch=0, started_s=1.0, finished_s=2.0, latency_s=2.0, deadline_s=1.5 + i)
            for i in range(3)]
    batches = [BatchRecord(batch=0, replica=0, rows=[0, 1, 2], started_s=1.0, finished_s=2.0, steps=6,
                           prompt_width=4, output_tokens=15, forecast_start_s=1.0, forecast_finish_s=2.5)]
    return rows, batches


@pytest.fixture
def run_dir(tmp_path):
    rows, batches = _results()
    m = summarize(rows, batches, model_load_s=1.0, forecast={"makespan_s": 1.5})
    write_reports(tmp_path, m, results=rows, batches=batches, utilisation=[], plan_dict={"policy": "fcfs"},
                  options={"job": "j.jsonl"}, versions={"uellm": "0"})
    with (tmp_path / "results.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r.to_record()) + "\n")
    (tmp_path / "report.html").unlink()
    return tmp_path


def test_report_json(app, run_dir):
    res = CliRunner().invoke(app, ["report", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    m = doc["metrics"]
    assert (m["rows"], m["ok"], m["slo_met"], m["rows_with_deadline"]) == (3, 3, 2, 3)  # 2.0 <= 2.5, 3.5
    assert m["makespan_s"] == 1.0 and m["throughput_tok_s"] == 15.0
    assert doc["forecast"] == {"makespan_s": 1.5} and doc["plan"] == {"policy": "fcfs"}
    assert (run_dir / "report.html").exists()


def test_report_terminal(app, run_dir):
    res = CliRunner().invoke(app, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "SLO attainment" in res.output and "report.html" in res.output


def test_report_of_a_folder_without_report_json(app, tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert isinstance(res.exception, InputError)


def test_history_list_and_show(app):
    rows, batches = _results()
    m = summarize(rows, batches)
    for i, job in enumerate(["nightly", "weekly", "nightly"]):
        store.record_run(store.RunRecord(metrics=m, results=rows, run_id=f"run-{i}", job_path=f"{job}.jsonl",
                                         model="tiny", started_at=f"2024-02-0{i + 1}T03:00:00"))
    runner = CliRunner()

    res = runner.invoke(app, ["history", "--json"])
    assert res.exit_code == 0, res.output
    assert [r["run_id"] for r in json.loads(res.stdout)] == ["run-2", "run-1", "run-0"]

    res = runner.invoke(app, ["history", "--job", "nightly", "--limit", "1", "--json"])
    assert [r["run_id"] for r in json.loads(res.stdout)] == ["run-2"]

    res = runner.invoke(app, ["history"])
    assert res.exit_code == 0
    assert "run-1" in res.output and "weekly" in res.output and "66.7%" in res.output

    res = runner.invoke(app, ["history", "show", "run-1", "--json"])
    assert res.exit_code == 0, res.output
    run = json.loads(res.stdout)
    assert run["job_name"] == "weekly"
    assert [r["row_id"] for r in run["rows_detail"]] == ["q0", "q1", "q2"]

    res = runner.invoke(app, ["history", "show", "run-0"])
    assert res.exit_code == 0, res.output
    assert "q2" in res.output and "SLO attainment" in res.output


def test_history_empty_and_unknown(app):
    runner = CliRunner()
    res = runner.invoke(app, ["history", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    res = runner.invoke(app, ["history", "show", "nope"])
    assert isinstance(res.exception, store.HistoryError)
