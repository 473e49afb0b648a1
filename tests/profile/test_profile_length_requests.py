"""Stated lengths ("write 100 words") as the served model answers them: the censored fit, its
predictions, the observation file, and `auto` using it once it knows enough rows."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from clirun import run_cli

from uellm_cli.profile import length_requests as R
from uellm_cli.profile import lengths as L


def _observations(n: int, *, intercept: float, slope: float, sd: float, cap: int, seed: int = 0,
                  sizes=(14, 28, 56, 112, 224, 350)) -> list[R.RequestObservation]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        req = float(rng.choice(sizes))
        natural = math.exp(intercept + slope * math.log(req) + rng.gauss(0.0, sd))
        tokens = max(1, min(round(natural), cap))
        out.append(R.RequestObservation(req, tokens, cap, natural >= cap))
    return out


def test_fit_recovers_a_known_compliance_curve():
    obs = _observations(600, intercept=1.9, slope=0.45, sd=0.3, cap=10_000)
    fit = R.fit_requests(obs)
    assert fit is not None and fit.rows == 600 and fit.cut == 0
    assert fit.slope == pytest.approx(0.45, abs=0.04)
    assert fit.intercept == pytest.approx(1.9, abs=0.15)
    assert fit.sd == pytest.approx(0.3, abs=0.04)


def test_rows_cut_at_their_budget_do_not_pull_the_curve_down():
    # a tight budget cuts the long requests: read as "at least this long", not as their length
    obs = _observations(600, intercept=1.0, slope=0.8, sd=0.3, cap=60)
    assert sum(o.cut for o in obs) > 100
    fit = R.fit_requests(obs)
    assert fit.slope == pytest.approx(0.8, abs=0.08)
    naive = np.polyfit(np.log([o.requested_tokens for o in obs]),
                       np.log([o.output_tokens for o in obs]), 1)[0]
    assert naive < 0.7  # what ignoring the cut would have learned


def test_too_few_rows_or_only_cut_rows_give_no_fit():
    assert R.fit_requests(_observations(R.MIN_ROWS - 1, intercept=2, slope=0.5, sd=0.2, cap=999)) is None
    cut = [R.RequestObservation(100.0, 8, 8, True) for _ in range(50)]
    assert R.fit_requests(cut) is None


def test_one_requested_length_gives_its_own_mean():
    obs = _observations(200, intercept=2.0, slope=0.5, sd=0.2, cap=9999, sizes=(140,))
    fit = R.fit_requests(obs)
    assert fit.slope == 0.0
    point, _, _ = fit.predict(140.0, 9999)
    assert point == pytest.approx(math.exp(2.0 + 0.5 * math.log(140)), rel=0.05)


def test_predictions_stay_within_the_budget_and_in_order():
    fit = R.RequestFit(intercept=2.0, slope=0.6, sd=0.5, rows=100, cut=0)
    for req, cap in [(10.0, 500), (300.0, 500), (300.0, 64), (5000.0, 16), (1.0, 1)]:
        point, upper, mean = fit.predict(req, cap)
        assert 1 <= point <= upper <= cap
        assert 1 <= mean <= cap
    assert fit.predict(5000.0, 16) == (16, 16, 16)
    # the mean of a log-normal lies above its median while the budget does not bind
    point, _, mean = fit.predict(100.0, 10_000)
    assert mean > point


def test_observe_reads_the_request_and_the_cut():
    assert R.observe("Tell me about cats.", 40, 128, "stop") is None
    o = R.observe("Write 100 words about cats.", 128, 128, "length")
    assert o.requested_tokens == pytest.approx(140.0) and o.cut
    assert not R.observe("In 3 sentences, explain rain.", 50, 128, "stop").cut
    assert R.observe("Write 100 words about cats.", None, 128, None) is None


def test_observations_round_trip_and_a_torn_line_is_skipped(tmp_path):
    path = tmp_path / "m--requests.jsonl"
    obs = _observations(30, intercept=2.0, slope=0.5, sd=0.2, cap=200)
    assert R.record_requests(obs, path) == 30
    with path.open("a") as f:
        f.write('{"requested_tokens": 14, "output_tok')  # a run killed mid-write
    assert R.record_requests([], path) == 0
    fit = R.load_request_fit(path)
    assert fit is not None and fit.rows == 30
    assert R.load_request_fit(tmp_path / "missing.jsonl") is None


def test_the_observation_file_is_cut_back_to_what_the_fit_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "KEEP_ROWS", 25)
    path = tmp_path / "m--requests.jsonl"
    for run in range(3):  # 20 rows a run: 60 lines would pass 2 x 25
        R.record_requests(_observations(20, intercept=2.0, slope=0.5, sd=0.2, cap=200, seed=run), path)
    lines = path.read_text().splitlines()
    assert len(lines) == 25
    newest = [json.dumps({"requested_tokens": o.requested_tokens, "output_tokens": o.output_tokens,
                          "max_new_tokens": o.max_new_tokens, "cut": o.cut})
              for o in _observations(20, intercept=2.0, slope=0.5, sd=0.2, cap=200, seed=2)]
    assert lines[-20:] == newest


def test_auto_answers_stated_lengths_from_past_runs_and_leaves_other_rows():
    model = "smollm2-135m"
    queries = [L.LengthQuery("Write 200 words about volcanoes.", 40, 128),
               L.LengthQuery("What is the capital of France?", 20, 128)]
    before = L.get_predictor("auto", model_name=model)
    assert not isinstance(before, L.RequestAware)
    base = before.predict(queries)
    R.record_requests(_observations(100, intercept=1.9, slope=0.45, sd=0.3, cap=128),
                      L.requests_path(model))
    after = L.get_predictor("auto", model_name=model)
    assert isinstance(after, L.RequestAware) and "100 past rows" in after.name
    stated, other = after.predict(queries)
    assert other == base[1]
    expected = math.exp(1.9 + 0.45 * math.log(280.0))
    assert stated.tokens == pytest.approx(expected, rel=0.15)
    assert stated.tokens < base[0].tokens
    # only `auto` learns it: an explicit predictor is what it says
    assert not isinstance(L.get_predictor("prompt", model_name=model), L.RequestAware)


def test_a_run_records_the_rows_that_stated_a_length(tmp_path, tiny_llama, capsys):
    rows = [{"id": f"w{i}", "prompt": f"Write {10 * (i + 1)} words about rivers.", "max_new_tokens": 5}
            for i in range(3)]
    rows.append({"id": "plain", "prompt": "Hello there", "max_new_tokens": 5})
    job = tmp_path / "job.jsonl"
    job.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["run", job, "--model", tiny_llama, "--out", tmp_path / "o", "-q", "--no-history",
            "--slo", "900", "--engine", "hf"]
    res = run_cli(capsys, *args)
    assert res.code == 0, res.err
    files = list((L.requests_path("x").parent).glob("*--requests.jsonl"))
    assert len(files) == 1
    seen = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert sorted(o["requested_tokens"] for o in seen) == pytest.approx([14.0, 28.0, 42.0])
    assert all(o["max_new_tokens"] == 5 and 1 <= o["output_tokens"] <= 5 for o in seen)
    # a resume with nothing left to run records its rows no second time
    assert run_cli(capsys, *args, "--resume").code == 0
    assert len(files[0].read_text().splitlines()) == 3
