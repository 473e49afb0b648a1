"""bench/ stays runnable: the smoke run end to end, plus the job generator and the figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import make_job  # noqa: E402
from systems.jobfile import deadline_priorities  # noqa: E402
from systems.outcome import SystemRun  # noqa: E402
from systems.spec import parse_system, parse_systems  # noqa: E402
from systems.summary import agreement, figures, fluid_bound, percentile  # noqa: E402

HF_SYSTEMS = ("hf-naive", "hf-static-8", "hf-cb")


@pytest.fixture(scope="module")
def smoke_doc(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench_results")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--smoke", "--systems", ",".join(HF_SYSTEMS),
         "--limit", "4", "--results-dir", str(out), "--name", "smoke-test"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out.glob("*-smoke-test.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").exists()
    assert "| hf-naive |" in proc.stdout  # the table goes to stdout too
    return json.loads(files[0].read_text())


def test_smoke_run_has_sane_figures(smoke_doc):
    assert smoke_doc["rows"] == 4
    assert [s["name"] for s in smoke_doc["systems"]] == list(HF_SYSTEMS)
    for s in smoke_doc["systems"]:
        assert s["status"] == "ok", s.get("reason")
        f = s["figures"]
        assert f["rows_ok"] == 4
        assert f["makespan_s"] > 0 and f["load_s"] >= 0 and f["makespan_s"] >= f["load_s"]
        assert 0.0 <= f["slo_attainment"] <= 1.0
        assert f["output_tokens"] > 0 and f["tok_s"] > 0
        assert f["peak_rss_mb"] > 50
        assert f["mean_latency_s"] <= f["p99_latency_s"] <= f["makespan_s"] + 1e-9
        assert all(r["finished_s"] <= f["makespan_s"] + 1e-3 for r in s["rows"])  # rounded
        assert all(0 < r["output_tokens"] <= 16 for r in s["rows"])
    base = smoke_doc["systems"][0]
    assert base["agreement"] is None
    assert all(v in (None, 1.0) for v in base["ratios"].values())
    roof = smoke_doc["roofline"]
    assert roof["flops"] > 0 and roof["bandwidth"] > 0
    assert roof["best_tok_s"] == min(roof["compute_bound_tok_s"], roof["memory_bound_tok_s"])


def test_smoke_greedy_hf_systems_agree_on_token_counts(smoke_doc):
    counts = [[r["output_tokens"] for r in s["rows"]] for s in smoke_doc["systems"]]
    assert all(c == counts[0] for c in counts)
    for s in smoke_doc["systems"][1:]:
        assert s["agreement"]["tokens"] == 1.0


def test_smoke_padding_waste_only_where_there_is_padding(smoke_doc):
    by = {s["name"]: s["figures"] for s in smoke_doc["systems"]}
    assert by["hf-naive"]["padding_waste"] == 0.0  # batch of one stops at its own EOS
    assert 0.0 <= by["hf-static-8"]["padding_waste"] < 1.0
    assert by["hf-cb"]["padding_waste"] is None


def test_make_job_is_deterministic_and_load_scales_deadlines():
    a, meta_a = make_job.make_rows(50, seed=3, load=1.0)
    b, _ = make_job.make_rows(50, seed=3, load=1.0)
    c, _ = make_job.make_rows(50, seed=4, load=1.0)
    hard, _ = make_job.make_rows(50, seed=3, load=2.0)
    assert a == b and a != c
    assert sorted(r["band"] for r in a) == sorted(i % 5 for i in range(50))
    for r, h in zip(a, hard, strict=True):
        assert abs(h["slo_s"] - r["slo_s"] / 2) <= 0.1
        lo, hi = make_job.BAND_FRACTIONS[r["band"]]
        assert lo * meta_a["t_est_s"] - 0.1 <= r["slo_s"] <= hi * meta_a["t_est_s"] + 0.1
        assert f"{r['target_words']}" in r["prompt"] and r["max_new_tokens"] == 128


def test_system_names_parse_and_reject():
    assert parse_system("hf-static-16").batch_size == 16
    assert parse_system("hf-cb").mode == "cb"
    assert parse_system("vllm-priority").priority
    assert parse_system("uellm-slo-odbs-paper").mode == "slo-odbs-paper"
    ray2 = parse_system("uellm-ray-2")
    assert (ray2.kind, ray2.mode, ray2.replicas) == ("uellm", "slo-odbs", 2)
    assert "--backend ray --replicas 2" in ray2.description
    for bad in ("hf-static-0", "uellm-magic", "vllm-fast", "uellm-ray-0"):
        with pytest.raises(ValueError):
            parse_system(bad)
    with pytest.raises(ValueError):
        parse_systems("hf-naive,hf-naive")


def test_deadline_priorities_rank_earliest_first():
    rows = [{"index": 0, "deadline_s": 50.0, "priority": 0},
            {"index": 1, "deadline_s": None, "priority": 0},
            {"index": 2, "deadline_s": 10.0, "priority": 0},
            {"index": 3, "deadline_s": 10.0, "priority": -1}]
    assert deadline_priorities(rows) == {3: 0, 2: 1, 0: 2, 1: 3}


def test_figures_and_agreement_by_hand():
    rows = [
        {"index": 0, "id": "a", "status": "ok", "output_tokens": 10, "output_text": "x",
         "finished_s": 4.0},
        {"index": 1, "id": "b", "status": "ok", "output_tokens": 20, "output_text": "y",
         "finished_s": 12.0},
        {"index": 2, "id": "c", "status": "error", "finished_s": 1.0},
    ]
    run = SystemRun("s", "ok", rows=rows, load_s=2.0)
    f = figures(run, {0: 5.0, 1: 10.0, 2: 100.0})
    assert f["makespan_s"] == 12.0 and f["output_tokens"] == 30
    assert f["tok_s"] == 30 / 10.0
    assert f["slo_attainment"] == 1 / 3  # the error row misses its deadline
    other = SystemRun("t", "ok", rows=[dict(rows[0]), {**rows[1], "output_text": "z"}])
    ag = agreement(other, run)
    assert ag["rows"] == 2 and ag["text"] == 0.5 and ag["tokens"] == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0


def test_fluid_bound_keeps_the_rows_moore_and_hodgson_keep():
    # at 1 token/s from t=1: in deadline order A (4 s) ends at 5, B (3 s) at 8 > 6, so A, the
    # longest kept, goes; B ends at 4, C (2 s) at 6, D (1 s) at 7: three of four on time
    rows = {i: {"index": i, "status": "ok", "output_tokens": n} for i, n in enumerate((4, 3, 2, 1))}
    deadlines = {0: 5.0, 1: 6.0, 2: 7.0, 3: 8.0, 4: None}
    assert fluid_bound(rows, deadlines, 1.0, 1.0) == 3 / 4
    assert fluid_bound(rows, deadlines, 10.0, 0.0) == 1.0  # fast enough for all
    assert fluid_bound({}, {0: 5.0}, 1.0, 0.0) == 0.0  # a failed row misses
    assert fluid_bound(rows, {0: None}, 1.0, 0.0) is None
