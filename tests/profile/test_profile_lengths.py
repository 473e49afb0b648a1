"""Output-length predictors: contract, features, training with censoring, storage, measures, CLI."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from uellm_cli.commands.lengths import register_lengths
from uellm_cli.errors import ConfigError, InputError
from uellm_cli.profile import length_features as lf
from uellm_cli.profile import length_two_part as LF
from uellm_cli.profile import lengths as L
from uellm_cli.profile.length_fit import km_quantile
from uellm_cli.profile.length_io import read_length_records

TOPICS = ["apples", "rivers", "jazz", "python lists", "the moon", "tax law", "bread", "chess"]
KINDS = {"in one word": 3, "as a short list": 60, "as a long essay": 400}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Trained predictors go to a per-test cache, not the shared model cache."""
    monkeypatch.setenv("UELLM_CACHE", str(tmp_path / "cache"))


def synthetic(n: int, seed: int, cap: int = 256, noise: float = 0.25) -> list[dict]:
    """Prompts whose true length depends on a phrase: log(tokens) = log(base) + N(0, noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = list(KINDS)[int(rng.integers(len(KINDS)))]
        topic = TOPICS[int(rng.integers(len(TOPICS)))]
        natural = max(1, int(round(KINDS[kind] * math.exp(rng.normal(0, noise)))))
        out.append({
            "id": f"r{seed}-{i}", "status": "ok",
            "prompt": f"Tell me about {topic} {kind}", "prompt_tokens": 12,
            "output_tokens": min(natural, cap), "max_new_tokens": cap,
            "finish_reason": "length" if natural >= cap else "stop", "natural": natural,
        })
    return out


def queries() -> list[L.LengthQuery]:
    return [
        L.LengthQuery("Answer in one word: what colour is the sky?", 20, 64),
        L.LengthQuery("Write a long essay on the history of Rome.", 15, 512),
        L.LengthQuery("List ten tips to sleep better.", 12, 8),
        L.LengthQuery("", 0, 1),
        L.LengthQuery("Explain " * 400, 1200, 300),
    ]


def check_contract(pred: L.Predictor) -> None:
    qs = queries()
    out = pred.predict(qs)
    assert len(out) == len(qs)
    for q, p in zip(qs, out, strict=True):
        assert isinstance(p.tokens, int) and isinstance(p.upper, int)
        assert 1 <= p.tokens <= p.upper <= max(q.max_new_tokens, 1)
    assert pred.predict([]) == []


@pytest.fixture(scope="module")
def trained() -> L.HistoryPredictor:
    return L.train_history(synthetic(400, seed=1), model_name="synthetic", hash_dim=256)


# ---- contract -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cap", "prompt", "fitted"])
def test_registered_predictors_keep_the_contract(name):
    pred = L.get_predictor(name, model_name="smollm2-135m")
    assert pred.name == name
    check_contract(pred)


def test_trained_history_keeps_the_contract(trained):
    check_contract(trained)


def test_cap_predicts_the_budget():
    assert L.CapPredictor().predict([L.LengthQuery("x", 3, 77)]) == [L.LengthPrediction(77, 77)]


def test_unknown_predictor_lists_the_known_names():
    with pytest.raises(ConfigError) as e:
        L.get_predictor("oracle")
    for name in L.PREDICTORS:
        assert name in str(e.value)


def test_history_without_training_fails_for_other_models_and_falls_back_for_default():
    with pytest.raises(ConfigError):
        L.get_predictor("history", model_name="some-org/other-model")
    assert L.load_predictor_for("some-org/other-model") is None
    pred = L.get_predictor("history", model_name="smollm2-135m")
    assert pred.name == "history" and pred.model_name == "smollm2-135m"


# ---- prompt features ----------------------------------------------------------------------


def test_prompt_predictor_reacts_to_requested_format():
    pred = L.get_predictor("prompt")
    word, essay = pred.predict([
        L.LengthQuery("Answer in one word: what is the capital of France?", 20, 2048),
        L.LengthQuery("Write an essay about the capital of France.", 20, 2048),
    ])
    assert word.tokens * 10 < essay.tokens
    assert word.upper < essay.tokens


def test_requested_length_is_read_from_the_prompt():
    few = lf.requested_tokens("Explain it in 2 sentences.")
    many = lf.requested_tokens("Explain it in 6 sentences.")
    assert few is not None and many is not None and many == 3 * few
    assert lf.requested_tokens("Write 100 words on cats") > lf.requested_tokens("Write 10 words")
    assert lf.requested_tokens("Give me a way to relax") is None  # "a way" states no length
    assert lf.requested_tokens("Is water wet? yes or no") is not None


def test_numeric_features_flag_formats():
    names = list(lf.NUMERIC_FEATURES)
    essay = lf.numeric_features("Write an essay about dogs", 10)
    code = lf.numeric_features("Write a python function that sorts a list", 10)
    assert essay[names.index("fmt_long")] == 1 and essay[names.index("fmt_code")] == 0
    assert code[names.index("fmt_code")] == 1
    assert lf.numeric_features("How do magnets work?", 8)[names.index("q_how")] == 1


def test_hashed_features_are_stable_and_normalised():
    a = lf.hashed_features("the quick brown fox", 64)
    assert np.allclose(a, lf.hashed_features("The quick brown fox", 64))
    assert math.isclose(float(np.linalg.norm(a)), 1.0)
    assert not np.any(lf.hashed_features("", 64))


# ---- history training ---------------------------------------------------------------------


def test_history_learns_a_known_relation_and_beats_cap(trained):
    test = synthetic(200, seed=2)
    res = L.evaluate([L.CapPredictor(), trained], test)
    assert res["history"]["kendall_tau"] > 0.6
    assert res["cap"]["kendall_tau"] is None  # constant predictions rank nothing
    assert res["history"]["mae"] < 0.5 * res["cap"]["mae"]
    assert res["history"]["bucket_accuracy"] > res["cap"]["bucket_accuracy"]
    one_word = trained.predict([L.LengthQuery("Tell me about jazz in one word", 12, 256)])[0]
    assert one_word.tokens <= 6


def test_censored_rows_do_not_drag_long_answers_down():
    # Natural length of essays ~ 400 but the budget is 128: every essay row is cut.
    recs = synthetic(300, seed=3, cap=128)
    assert sum(r["finish_reason"] == "length" for r in recs) > 50
    pred = L.train_history(recs, model_name="cens", hash_dim=128, l2=1.0, method="linear")
    mu = pred.model.log_tokens([L.LengthQuery("Tell me about bread as a long essay", 12, 4096)])
    assert math.exp(mu[0]) > 250  # the uncensored estimate recovers a length above the cap
    naive = [dict(r, finish_reason="stop", max_new_tokens=10_000) for r in recs]
    p2 = L.train_history(naive, model_name="naive", hash_dim=128, l2=1.0, method="linear")
    mu2 = p2.model.log_tokens([L.LengthQuery("Tell me about bread as a long essay", 12, 4096)])
    assert mu2[0] < mu[0]
    # At the same cap, predictions stay within it.
    p = pred.predict([L.LengthQuery("Tell me about bread as a long essay", 12, 128)])[0]
    assert p.tokens == p.upper == 128


def test_upper_quantile_covers_most_rows(trained):
    res = L.evaluate([trained], synthetic(300, seed=4))
    assert res["history"]["upper_coverage"] >= 0.8
    assert res["history"]["mean_upper"] >= res["history"]["mean_tokens"]


def test_too_few_rows_is_an_input_error():
    with pytest.raises(InputError):
        L.train_history(synthetic(5, seed=5), model_name="x")


def test_clean_records_drops_unusable_rows_and_infers_censoring():
    recs = [
        {"prompt": "a", "output_tokens": 10, "status": "ok"},
        {"prompt": "b", "output_tokens": 40, "status": "ok"},
        {"prompt": "c", "output_tokens": None},
        {"prompt": "d", "output_tokens": 5, "status": "error"},
        {"output_tokens": 5},
        {"messages": [{"role": "user", "content": "hi"}], "output_tokens": 7,
         "max_new_tokens": 7, "finish_reason": "length"},
    ]
    rows = L.clean_records(recs)
    assert [r.query.text for r in rows] == ["a", "b", "hi"]
    assert [r.censored for r in rows] == [False, True, True]  # b reached the largest seen
    assert rows[0].query.max_new_tokens == 40


# ---- storage ------------------------------------------------------------------------------


def test_save_load_round_trip(trained):
    path = L.save_predictor(trained)
    assert path == L.predictor_path("synthetic") and path.exists()
    loaded = L.load_predictor_for("synthetic")
    assert loaded is not None and loaded.n_train == trained.n_train
    qs = [L.LengthQuery(r["prompt"], 12, 256) for r in synthetic(50, seed=6)]
    assert loaded.predict(qs) == trained.predict(qs)


def test_predictor_path_is_safe_for_hub_ids():
    p = L.predictor_path("org/Model:v1")
    assert p.parent.name == "predictors" and "/" not in p.name and p.suffix == ".json"


def test_shipped_fitted_predictor_is_for_the_default_model():
    fitted = L.load_fitted()
    assert L.is_default_model(fitted.model_name)
    assert fitted.n_train > 100 and fitted.method == "two-part"
    assert isinstance(fitted.model, LF.TwoPartLengthModel)
    assert fitted.n_censored > fitted.n_train / 2  # SmolLM2 loops on most dev prompts
    assert L.is_default_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not L.is_default_model("meta-llama/Llama-2-7b-hf")


def test_corrupt_predictor_file_is_a_config_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError):
        L.load_predictor_file(bad)


# ---- measures -----------------------------------------------------------------------------


def brute_tau_b(x, y) -> float:
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif dx == dy:
            conc += 1
        else:
            disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else float("nan")


@pytest.mark.parametrize("seed", range(6))
def test_kendall_tau_b_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    x = rng.integers(0, 6, n).astype(float)  # many ties
    y = x + rng.integers(-3, 4, n)
    assert math.isclose(lf.kendall_tau_b(x, y), brute_tau_b(x, y), abs_tol=1e-12)


def test_kendall_tau_b_extremes():
    x = np.arange(10.0)
    assert lf.kendall_tau_b(x, x) == pytest.approx(1.0)
    assert lf.kendall_tau_b(x, -x) == pytest.approx(-1.0)
    assert math.isnan(lf.kendall_tau_b(np.ones(5), x[:5]))


def test_power_of_two_buckets():
    assert list(lf.bucket_of(np.array([1, 7, 8, 15, 16, 255, 256, 1024]))) == [0, 0, 1, 1, 2, 5, 6, 8]
    assert lf.bucket_accuracy(np.array([9, 100, 3]), np.array([15, 200, 7])) == pytest.approx(2 / 3)


def test_km_quantile_without_censoring_is_the_empirical_quantile():
    v = np.arange(1.0, 11.0)
    assert km_quantile(v, np.zeros(10, bool), 0.5) == 5.0
    assert km_quantile(v, np.array([False] * 5 + [True] * 5), 0.9) is None


def test_evaluate_shape_and_values():
    recs = [{"prompt": f"p{i}", "output_tokens": t, "max_new_tokens": 64}
            for i, t in enumerate([4, 20, 64, 33])]
    res = L.evaluate({"cap": L.CapPredictor(), "prompt": L.PromptPredictor()}, recs)
    assert set(res) == {"cap", "prompt"}
    keys = {"n", "mae", "bucket_accuracy", "kendall_tau", "upper_coverage", "mean_tokens",
            "mean_upper"}
    assert all(set(m) == keys for m in res.values())
    assert res["cap"]["mae"] == pytest.approx((60 + 44 + 0 + 31) / 4)
    assert res["cap"]["bucket_accuracy"] == pytest.approx(0.25)
    assert res["cap"]["upper_coverage"] == 1.0


# ---- files and CLI ------------------------------------------------------------------------


def write_run(tmp_path, recs):
    """A results.parquet without prompt text, and the job it came from."""
    import pandas as pd

    results = tmp_path / "results.parquet"
    pd.DataFrame([{k: r[k] for k in ("id", "status", "output_tokens", "prompt_tokens",
                                     "finish_reason")} for r in recs]).to_parquet(results)
    job = tmp_path / "job.jsonl"
    job.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"],
                                       "max_new_tokens": r["max_new_tokens"]}) + "\n"
                           for r in recs))
    return results, job


def test_results_need_the_job_for_prompt_text(tmp_path):
    results, job = write_run(tmp_path, synthetic(20, seed=7))
    with pytest.raises(InputError):
        read_length_records(results)
    recs = read_length_records(results, job)
    assert len(recs) == 20 and all(r["prompt"].startswith("Tell me") for r in recs)
    assert all(r["max_new_tokens"] == 256 for r in recs)


def cli():
    profile = typer.Typer()
    register_lengths(profile)
    app = typer.Typer()
    app.add_typer(profile, name="profile")
    return app


def test_cli_trains_stores_and_evaluates(tmp_path):
    results, job = write_run(tmp_path, synthetic(150, seed=8))
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps(r) + "\n" for r in synthetic(80, seed=9)))
    runner = CliRunner()
    r = runner.invoke(cli(), ["profile", "lengths", "--train", str(results), "--job", str(job),
                              "--model", "org/tiny", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["trained"]["rows"] == 150
    assert L.predictor_path("org/tiny").exists()

    r = runner.invoke(cli(), ["profile", "lengths", "--eval", str(test_file), "--model",
                              "org/tiny", "--json"])
    assert r.exit_code == 0, r.output
    preds = json.loads(r.stdout)["eval"]["predictors"]
    assert set(preds) == {"cap", "prompt", "history", "fitted"}
    assert preds["history"]["kendall_tau"] > 0.5
    assert preds["history"]["mae"] < preds["cap"]["mae"]


def test_cli_table_and_split_filter(tmp_path):
    recs = synthetic(40, seed=10)
    for i, r in enumerate(recs):
        r["split"] = "test" if i % 4 == 0 else "train"
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = CliRunner().invoke(cli(), ["profile", "lengths", "--eval", str(f), "--split", "test",
                                   "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["eval"]["predictors"]["cap"]["n"] == 10
    r = CliRunner().invoke(cli(), ["profile", "lengths", "--eval", str(f)])
    assert r.exit_code == 0 and "Kendall" in r.output and "fitted" in r.output


def test_cli_training_needs_a_model(tmp_path):
    results, job = write_run(tmp_path, synthetic(20, seed=11))
    r = CliRunner().invoke(cli(), ["profile", "lengths", "--train", str(results), "--job", str(job)])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError)


def test_history_trained_on_another_prior_is_refused(trained, tmp_path):
    d = trained.to_dict()
    assert d["model"]["prior_id"]
    d["model"]["prior_id"] = "0" * 12
    path = tmp_path / "old.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError):
        L.load_predictor_file(path)


def test_history_without_prior_keeps_the_contract():
    pred = L.train_history(synthetic(120, seed=12), model_name="np", hash_dim=64, use_prior=False)
    assert "prompt_prior" not in pred.to_dict()["model"]["features"]
    check_contract(pred)


def test_cli_trains_from_the_history_database():
    from uellm_cli import store

    conn = store.connect()
    with conn:
        conn.execute("INSERT INTO runs (run_id, started_at, model) VALUES ('r1', '2026-01-01', 'org/m')")
        conn.execute("INSERT INTO runs (run_id, started_at, model) VALUES ('r2', '2026-01-02', 'other')")
        for i, r in enumerate(synthetic(60, seed=13)):
            for run in ("r1", "r2"):
                conn.execute(
                    "INSERT INTO rows (run_id, idx, row_id, status, prompt_text, prompt_tokens,"
                    " max_new_tokens, output_tokens, finish_reason) VALUES (?,?,?,?,?,?,?,?,?)",
                    (run, i, r["id"], "ok", r["prompt"], 12, 256, r["output_tokens"],
                     r["finish_reason"]))
    conn.close()
    r = CliRunner().invoke(cli(), ["profile", "lengths", "--from-history", "--model", "org/m",
                                   "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["trained"]["rows"] == 60  # only the runs of org/m
    assert L.load_predictor_for("org/m").n_train == 60


def test_store_messages_are_joined_like_the_runner_does():
    from uellm_cli.store import stored_prompt_text as _store_text

    assert _store_text('[{"role": "user", "content": "hi"}, {"role": "user", "content": "yo"}]') == "hi\nyo"
    assert _store_text("[not json]") == "[not json]"
    assert _store_text("plain") == "plain"


# ---- two-part model ------------------------------------------------------------------------


def looping(n: int, seed: int, cap: int = 256) -> list[dict]:
    """Prompts that say "again" loop (run to the budget) 90% of the time; others stop near a
    length set by their kind."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = list(KINDS)[int(rng.integers(len(KINDS)))]
        again = bool(rng.random() < 0.5)
        loops = rng.random() < (0.9 if again else 0.1)
        natural = 10**6 if loops else max(1, int(round(min(KINDS[kind], 200) * math.exp(rng.normal(0, 0.2)))))
        out.append({
            "id": f"l{seed}-{i}", "prompt": f"Tell me about {TOPICS[i % len(TOPICS)]} {kind}"
            + (" again and again" if again else ""), "prompt_tokens": 12,
            "output_tokens": min(natural, cap), "max_new_tokens": cap,
            "finish_reason": "length" if natural >= cap else "stop",
        })
    return out


def test_mixture_quantile_is_the_stop_quantile_or_the_budget():
    sd = 0.5
    p = np.array([0.0, 0.2, 0.6])
    m = np.log(np.array([50.0, 50.0, 50.0]))
    caps = np.full(3, 1000.0)
    out = LF.mixture_tokens(p, m, sd, 0.5, caps)
    assert out[0] == pytest.approx(50.0, rel=1e-3)  # no loop: the log-normal median
    # 20% loops: the overall median is the stopped rows' 0.5/0.8 quantile
    assert out[1] == pytest.approx(50.0 * math.exp(sd * 0.3186), rel=1e-3)
    assert out[2] == 1000.0  # more than half loop: the budget
    # the tie-break orders rows expected to loop by their loop probability, a few tokens below
    tb = LF.mixture_tokens(np.array([0.6, 0.9]), m[:2], sd, 0.5, caps[:2], tie_break=0.05)
    assert 950.0 <= tb[0] < tb[1] < 1000.0


def test_mixture_mean_is_the_mean_of_the_capped_mixture():
    """E[min(X, cap)] in closed form against a Monte Carlo draw of the same mixture."""
    rng = np.random.default_rng(3)
    p, m, sd = np.array([0.0, 0.16, 0.5, 0.0]), np.log(np.array([35.0, 35.0, 80.0, 400.0])), 0.8
    caps = np.array([512.0, 512.0, 512.0, 128.0])
    closed = LF.mixture_mean(p, m, sd, caps)
    for i in range(len(p)):
        loops = rng.random(400_000) < p[i]
        draws = np.where(loops, np.inf, np.exp(m[i] + sd * rng.standard_normal(400_000)))
        assert closed[i] == pytest.approx(np.minimum(draws, caps[i]).mean(), rel=0.01)
    # a row that loops one time in six: its 0.4-quantile is its short answer, its mean holds
    # a sixth of a loop, which is what the job's time adds up
    point = LF.mixture_tokens(p[1:2], m[1:2], sd, 0.4, caps[1:2])[0]
    assert point < 40.0 < 100.0 < closed[1]


def test_two_part_predictions_carry_their_mean():
    pred = L.train_history(looping(300, seed=20), model_name="loops", hash_dim=256)
    qs = [L.LengthQuery("Tell me about jazz as a short list again and again", 12, 256),
          L.LengthQuery("Tell me about jazz in one word", 12, 256)]
    p, m = pred.model.parts(qs)
    out = pred.predict(qs)
    for o, want in zip(out, LF.mixture_mean(p, m, pred.model.sd_len, np.full(2, 256.0)), strict=True):
        assert o.mean == round(float(want)) and 1 <= o.mean <= 256
    assert out[1].mean > out[1].tokens  # the small chance of a loop weighs in the mean only
    # a model without a distribution of lengths has no mean apart from its point
    assert all(o.mean is None for o in L.PromptPredictor().predict(qs))
    assert all(o.mean is None for o in
               L.train_history(synthetic(60, seed=24), model_name="lin", hash_dim=32,
                               method="linear").predict(qs))


def test_quantile_at_a_smaller_budget_is_the_capped_quantile():
    p, m = np.array([0.1, 0.3, 0.45]), np.log(np.array([40.0, 120.0, 300.0]))
    big = LF.mixture_tokens(p, m, 0.6, 0.4, np.full(3, 4096.0))
    small = LF.mixture_tokens(p, m, 0.6, 0.4, np.full(3, 100.0))
    assert np.allclose(small, np.minimum(big, 100.0))


def test_woodbury_logistic_matches_the_direct_solve():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 50))
    y = (a[:, 0] + rng.normal(size=30) > 0).astype(float)
    pen = np.ones(50)
    wide = LF._logistic(a, y, 3.0, pen)
    # the same problem with more rows than columns (duplicated rows, doubled penalty) takes the
    # primal path and must give the same weights
    tall = LF._logistic(np.vstack([a, a]), np.concatenate([y, y]), 6.0, pen)
    assert np.allclose(wide[1:], tall[1:], atol=1e-5)


def test_two_part_learns_which_prompts_loop():
    pred = L.train_history(looping(300, seed=20), model_name="loops", hash_dim=256)
    assert pred.method == "two-part" and pred.config is not None
    qs = [L.LengthQuery("Tell me about jazz as a short list again and again", 12, 256),
          L.LengthQuery("Tell me about jazz as a short list", 12, 256)]
    p, _ = pred.model.parts(qs)
    assert p[0] > p[1] + 0.2  # shrunk by the strong penalties of the grid, but learned
    a, b = pred.predict(qs)
    assert a.tokens > 200 and b.tokens < 150 and b.upper <= 256
    res = L.evaluate([L.CapPredictor(), pred], looping(200, seed=21))
    assert res["history"]["mae"] < res["cap"]["mae"]
    assert res["history"]["kendall_tau"] > 0.4


def test_two_part_round_trip_and_old_linear_files_still_load(tmp_path):
    pred = L.train_history(looping(120, seed=22), model_name="rt", hash_dim=64)
    qs = [L.LengthQuery(r["prompt"], 12, 200) for r in looping(30, seed=23)]
    path = L.save_predictor(pred)
    back = L.load_predictor_file(path)
    assert back.method == "two-part" and back.predict(qs) == pred.predict(qs)
    lin = L.train_history(synthetic(60, seed=24), model_name="lin", hash_dim=32, method="linear")
    back = L.load_predictor_file(L.save_predictor(lin))
    assert back.method == "linear" and back.predict(qs) == lin.predict(qs)


def test_unknown_training_method_is_a_config_error():
    with pytest.raises(ConfigError):
        L.train_history(synthetic(20, seed=25), model_name="x", method="forest")


def test_cv_picks_from_the_given_grid_only():
    cfg = LF.TwoPartConfig(False, 1.0, 1.0, 0.45, 0.0)
    pred = L.train_history(looping(80, seed=26), model_name="g", hash_dim=64, grid=[cfg])
    assert pred.config == {"hashed": False, "l2_hit": 1.0, "l2_len": 1.0,
                           "point_quantile": 0.45, "tie_break": 0.0}
    assert pred.model.hash_dim == 0 and pred.model.tie_break == 0.0
