"""`uellm plan` end to end (reader, model profile and cluster spec come from their own modules)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from uellm_cli.commands.plan import register


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keeps `plan` a sub-command
        """test app"""

    return app


@pytest.fixture()
def job(tmp_path):
    rows = [
        {"id": "fast", "prompt": "What is the capital of France?", "slo_s": 3600, "max_new_tokens": 16},
        {"id": "urgent", "prompt": "Write a short poem about the sea.", "slo_s": 0.001},
        {"id": "chat", "messages": [{"role": "user", "content": "Hello world!"}], "slo_s": 3600},
        {"id": "sampled", "prompt": "Explain why the sky is blue.", "temperature": 0.7},
    ]
    path = tmp_path / "job.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_plan_json_for_a_local_model_on_a_spec_cluster(app, job, tiny_llama):
    res = CliRunner().invoke(app, ["plan", str(job), "--model", str(tiny_llama), "--cluster", "2xA100-40GB",
                                   "--max-new-tokens", "32", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["forecast"]) == 4
    misses = {f["index"] for f in doc["forecast"] if f["slo_met"] is False}
    assert misses == {1}  # only the 1 ms deadline is out of reach
    strategies = {a["strategy"] for a in doc["alternatives"]}
    assert any(s.startswith("helr") for s in strategies) and strategies & {"auto", "balanced", "sequential"}
    devices = {d for r in doc["deployment"]["replicas"] for d in r["devices"]}
    assert devices <= {"cuda:0", "cuda:1"}
    batches = doc["batches"]
    assert not any({0, 3} <= set(b["rows"]) for b in batches)  # sampled row never batched with greedy ones


def test_plan_prints_the_deployment_alternatives_and_misses(app, job, tiny_llama):
    res = CliRunner().invoke(app, ["plan", str(job), "--model", str(tiny_llama), "--cluster", "2xA100-40GB",
                                   "--no-baselines"])
    assert res.exit_code == 0, res.output
    err = res.stderr
    for part in ("Chosen deployment", "Alternatives", "Batch timeline", "forecast to miss", "urgent"):
        assert part in err
    assert res.stdout == ""


def test_plan_for_hardware_we_do_not_have_needs_no_weights(app, job):
    res = CliRunner().invoke(app, ["plan", str(job), "--model", "llama-7b", "--cluster", "8xH100-80GB",
                                   "--no-baselines", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["deployment"]["replicas"]) >= 1
    assert all(len(r["devices"]) == 1 for r in doc["deployment"]["replicas"])  # 7B fits one H100


def test_unknown_policy_is_a_config_error(app, job, tiny_llama):
    from uellm_cli.errors import ConfigError

    res = CliRunner().invoke(app, ["plan", str(job), "--model", str(tiny_llama), "--cluster", "cpu",
                                   "--policy", "nope", "--no-baselines"])
    assert isinstance(res.exception, ConfigError)


def test_plan_replicas_is_exact_and_too_many_is_refused(app, job):
    from uellm_cli.errors import ConfigError

    args = ["plan", str(job), "--model", "llama-7b", "--cluster", "8xH100-80GB", "--no-baselines", "--json"]
    res = CliRunner().invoke(app, [*args, "--replicas", "3"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["deployment"]["replicas"]) == 3
    res = CliRunner().invoke(app, [*args, "--replicas", "9"])
    assert isinstance(res.exception, ConfigError) and "only 8 replica(s)" in str(res.exception)


def test_plan_for_vllm_counts_its_engine_start(app, job):
    from uellm_cli.engine.vllm_settings import EXPECTED_START_S

    args = ["plan", str(job), "--model", "llama-7b", "--cluster", "1xA100-80GB", "--no-baselines", "--json"]
    starts = {}
    for engine in ("hf", "vllm"):
        res = CliRunner().invoke(app, [*args, "--engine", engine])
        assert res.exit_code == 0, res.output
        starts[engine] = json.loads(res.stdout)["start_offset_s"]
    assert starts["vllm"] == pytest.approx(starts["hf"] + EXPECTED_START_S)
