"""History DB: migrations from blank and from the oldest schema, and run/row round trips."""

from __future__ import annotations

import sqlite3

import pytest

from uellm_cli import paths, store
from uellm_cli.errors import UellmError
from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.jobs.schema import Row
from uellm_cli.report.metrics import summarize

RUNS_COLUMNS = [
    "run_id", "started_at", "finished_at", "job_path", "job_name", "job_fingerprint", "model", "options",
    "versions", "rows", "ok", "errors", "rejected", "slo_attainment", "makespan_s", "throughput_tok_s",
    "latency_mean_s", "latency_p99_s", "out_dir", "state",
    "goodput_tok_s", "padding_waste", "model_load_s", "metrics",  # m004
]
ROWS_COLUMNS = [
    "run_id", "idx", "row_id", "status", "prompt_text", "prompt_tokens", "max_new_tokens",
    "predicted_output_tokens", "output_tokens", "finish_reason", "latency_s", "deadline_s", "slo_met",
]
ALL_MIGRATIONS = ["m001_runs", "m002_rows", "m003_indexes", "m004_run_metrics"]


def columns(conn, table):
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def applied(conn):
    return [r[0] for r in conn.execute("SELECT name FROM _uellm_migrations ORDER BY rowid")]


def test_migrations_are_listed_in_order():
    assert [m.__name__ for m in store.MIGRATIONS] == ALL_MIGRATIONS


def test_blank_db_gets_every_migration(tmp_path):
    conn = store.connect(tmp_path / "h.db")
    assert applied(conn) == ALL_MIGRATIONS
    assert columns(conn, "runs") == RUNS_COLUMNS
    assert columns(conn, "rows") == ROWS_COLUMNS
    assert store.migrate(conn) == []  # idempotent
    conn.close()


def test_db_at_the_oldest_schema_migrates_and_keeps_its_data(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    assert store.migrate(conn, [store.m001_runs]) == ["m001_runs"]
    assert columns(conn, "runs") == RUNS_COLUMNS[:20]
    conn.execute("INSERT INTO runs (run_id, started_at, job_name, rows) VALUES ('old', '2020-01-01', 'j', 3)")
    conn.commit()
    conn.close()

    conn = store.connect(path)
    assert applied(conn) == ALL_MIGRATIONS
    assert columns(conn, "runs") == RUNS_COLUMNS
    assert columns(conn, "rows") == ROWS_COLUMNS
    conn.close()
    old = store.list_runs(db=path)
    assert [(r["run_id"], r["rows"], r["metrics"]) for r in old] == [("old", 3, None)]


def test_default_location_follows_uellm_home():
    store.connect().close()
    assert (paths.home_dir() / "history.db").exists()


def _run(n_ok=2):
    results = [
        RowResult(index=i, id=f"q{i}", status="ok", prompt_tokens=5, output_tokens=10 + i,
                  predicted_output_tokens=12, finish_reason="stop", replica=0, batch=0,
                  started_s=1.0, finished_s=2.0 + i, latency_s=2.0 + i, deadline_s=2.5)
        for i in range(n_ok)
    ]
    results.append(RowResult(index=n_ok, id=f"q{n_ok}", status="error", deadline_s=9.0, error_code="oom"))
    rows = [Row(index=i, line=i + 1, id=f"q{i}", prompt=f"prompt {i}" if i else None,
                messages=None if i else [{"role": "user", "content": "hé"}], deadline_s=2.5,
                max_new_tokens=64) for i in range(n_ok + 1)]
    batches = [BatchRecord(batch=0, replica=0, rows=list(range(n_ok)), started_s=1.0, finished_s=2.0 + n_ok - 1,
                           steps=11 + n_ok, prompt_width=5, output_tokens=sum(r.output_tokens for r in results[:n_ok]))]
    return results, rows, summarize(results, batches, model_load_s=0.5)


def test_record_run_round_trip():
    results, rows, m = _run()
    rid = store.record_run(store.RunRecord(
        metrics=m, results=results, rows=rows, job_path="/jobs/nightly.jsonl", fingerprint="abc",
        model="tiny-llama", options={"slo": 5.0}, versions={"uellm": "0.1"}, out_dir="/tmp/out",
        started_at="2024-05-01T01:00:00+00:00", finished_at="2024-05-01T01:10:00+00:00"))
    run = store.get_run(rid)
    assert run["job_name"] == "nightly" and run["job_fingerprint"] == "abc" and run["model"] == "tiny-llama"
    assert run["options"] == {"slo": 5.0} and run["versions"] == {"uellm": "0.1"}
    assert (run["rows"], run["ok"], run["errors"], run["rejected"]) == (3, 2, 1, 0)
    assert run["slo_attainment"] == m.slo_attainment and run["makespan_s"] == m.makespan_s
    assert run["metrics"]["throughput_tok_s"] == m.throughput_tok_s
    detail = run["rows_detail"]
    assert [r["row_id"] for r in detail] == ["q0", "q1", "q2"]
    assert detail[0]["prompt_text"] == '[{"role": "user", "content": "hé"}]'
    assert detail[1]["prompt_text"] == "prompt 1"
    # q0 finished at 2.0 <= 2.5; q1 at 3.0 > 2.5; q2 failed with a deadline
    assert [r["slo_met"] for r in detail] == [1, 0, 0]
    assert [r["max_new_tokens"] for r in detail] == [64, 64, 64]
    assert detail[1]["output_tokens"] == 11 and detail[1]["predicted_output_tokens"] == 12


def test_record_run_takes_prompts_by_index_and_replaces_a_run_recorded_again():
    results, _, m = _run(1)
    records = results
    rid = store.record_run(store.RunRecord(metrics=m, results=records, prompts={0: "hello"},
                                           run_id="r-1", job_path="a.jsonl"))
    assert rid == "r-1"
    detail = store.get_run("r-1")["rows_detail"]
    assert [(r["row_id"], r["prompt_text"], r["status"]) for r in detail] == [("q0", "hello", "ok"), ("q1", None, "error")]
    # recording the same run id again replaces it (resume)
    store.record_run(store.RunRecord(metrics=m, results=records[:1], run_id="r-1", job_path="a.jsonl"))
    assert len(store.get_run("r-1")["rows_detail"]) == 1


def test_list_runs_filters_newest_first_and_limits():
    _, _, m = _run()
    for i, job in enumerate(["a", "b", "a", "a"]):
        store.record_run(store.RunRecord(metrics=m, results=[], run_id=f"run{i}",
                                         job_path=f"/x/{job}.jsonl", started_at=f"2024-01-0{i + 1}T00:00:00"))
    assert [r["run_id"] for r in store.list_runs()] == ["run3", "run2", "run1", "run0"]
    assert [r["run_id"] for r in store.list_runs(job="a", limit=2)] == ["run3", "run2"]
    assert [r["run_id"] for r in store.list_runs(job="/x/b.jsonl")] == ["run1"]


def test_get_run_by_prefix_and_errors():
    _, _, m = _run()
    store.record_run(store.RunRecord(metrics=m, results=[], run_id="abc-1"))
    store.record_run(store.RunRecord(metrics=m, results=[], run_id="abd-2"))
    assert store.get_run("abc")["run_id"] == "abc-1"
    with pytest.raises(store.HistoryError, match="ambiguous"):
        store.get_run("ab")
    with pytest.raises(store.HistoryError, match="no run"):
        store.get_run("zzz")


def test_iter_rows_for_predictor_training():
    results, rows, m = _run()
    store.record_run(store.RunRecord(metrics=m, results=results, rows=rows, model="tiny-llama", run_id="t1"))
    store.record_run(store.RunRecord(metrics=m, results=results, rows=rows, model="other", run_id="t2"))
    got = list(store.iter_rows(model="tiny-llama"))
    assert [(r["row_id"], r["output_tokens"], r["max_new_tokens"]) for r in got] == [("q0", 10, 64), ("q1", 11, 64)]
    assert got[1]["prompt_text"] == "prompt 1"
    assert len(list(store.iter_rows())) == 4  # ok rows of both runs; the failed row is left out


def test_unreadable_db_is_one_user_error(tmp_path):
    bad_db = tmp_path / "h.db"
    bad_db.write_bytes(b"this is not a sqlite database, just some bytes" * 100)
    with pytest.raises(UellmError, match="cannot open history database"):
        store.connect(bad_db)


def test_a_failing_migration_leaves_no_trace(tmp_path):
    def m_broken(conn):
        conn.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("boom")

    conn = sqlite3.connect(tmp_path / "h.db")
    with pytest.raises(RuntimeError):
        store.migrate(conn, [store.m001_runs, m_broken])
    assert applied(conn) == ["m001_runs"]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half" not in tables and "runs" in tables
    conn.close()
