"""Calibration (measure + fit + store) and the `uellm profile` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from uellm_cli.engine.calibrate import calibrate, grid
from uellm_cli.engine.vllm_calibrate import DECODE_TOKENS, calibration_lengths
from uellm_cli.errors import ConfigError
from uellm_cli.profile.calibrate import (
    fit,
    load_calibrations,
    long_prompts,
    nnls,
    save_calibration,
)
from uellm_cli.profile.calibration import Calibration


def test_nnls_recovers_non_negative_coefficients():
    rng = np.random.default_rng(1)
    a = np.column_stack([np.ones(30), rng.uniform(1, 1e3, 30), rng.uniform(1, 1e6, 30)])
    truth = np.array([0.05, 2e-4, 0.0])
    coef = nnls(a, a @ truth)
    assert np.allclose(coef, truth, atol=1e-9)


def test_nnls_clamps_what_least_squares_makes_negative():
    a = np.column_stack([np.ones(5), np.arange(1.0, 6.0)])
    y = 10.0 - np.arange(1.0, 6.0)  # the unconstrained slope is -1
    coef = nnls(a, y)
    assert coef[1] == 0.0 and coef[0] == pytest.approx(y.mean())


def test_fit_reports_mape():
    rows = [(1.0, x) for x in (1, 2, 4, 8)]
    coef, mape = fit(rows, [0.1 + 0.01 * x for _, x in rows])
    assert coef == pytest.approx([0.1, 0.01]) and mape < 1e-9
    _, noisy = fit(rows, [0.1, 0.5, 0.14, 0.18])
    assert noisy > 0.05


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_calibrate_tiny_llama(tiny_llama):
    cal = calibrate(str(tiny_llama), batch_sizes=(1, 4), contexts=(8, 32), repeats=1, max_prefill_tokens=128)
    assert cal.engine == "hf" and cal.model == tiny_llama.name and cal.device_name
    assert cal.samples == 4 + 4 + 1 + 2  # the grid, then a prompt of 496 of the 512-token context
    assert all(c >= 0 for c in cal.prefill + cal.decode)
    assert cal.prefill_s(4, 32) > 0 and cal.decode_s(4, 32) > 0
    assert cal.prefill_s(4, 32) >= cal.prefill_s(1, 8)  # non-negative coefficients: monotone
    assert {"prefill_mape", "decode_mape"} <= cal.fit_error.keys()
    assert all(np.isfinite(cal.fit_error[k]) and cal.fit_error[k] >= 0 for k in ("prefill_mape", "decode_mape"))
    assert cal.fit_error["dtype"] == "float32"


def test_the_grid_times_prompts_up_to_the_models_context():
    """A fit over prompts of at most 512 tokens extrapolated a 5,864-token prefill to 2.6 s (it
    took minutes): long prompts are timed one row at a time, up to the context."""
    assert long_prompts(512, 8192) == [2048, 4096, 8176]
    assert long_prompts(512, 512) == []  # the grid already reaches the context
    assert long_prompts(512, 3000) == [2048, 2984]
    assert long_prompts(512, 131072)[-1] == 16384 - 16  # capped: hours of prefill on a CPU
    prefill, decode = grid((1, 4, 16), (32, 128, 512), 512, 8192)
    assert (1, 8176) in prefill and (4, 8176) not in prefill  # long prompts alone
    assert max(L for _, L in prefill) == 8176 and (4, 8176) in decode
    assert all(b * L <= 512 for b, L in prefill if L <= 512)


def test_the_vllm_engine_of_a_calibration_takes_its_longest_prompt_and_the_tokens_after_it():
    """vLLM refuses a prompt that leaves no room for an output token: an engine sized to the
    longest prompt alone (8176 of an 8192 context) failed `uellm profile --calibrate` at its
    last job, after four minutes."""
    for ctx in (512, 3000, 8192, 131072):
        points, longs, max_len = calibration_lengths((1, 4, 16), (32, 128, 512), 8192, ctx)
        assert max_len <= ctx
        assert all(max_len >= L + DECODE_TOKENS for L in longs)
        assert all(c + DECODE_TOKENS <= max_len for _, c in points)
    assert calibration_lengths((1,), (32,), 8192, 8192)[1:] == ([2048, 4096, 8176], 8192)


def test_calibrate_refuses_other_engines_and_devices(tiny_llama):
    with pytest.raises(ConfigError):
        calibrate(str(tiny_llama), engine="vllm")
    with pytest.raises(ConfigError):
        calibrate(str(tiny_llama), device="tpu")


def _cal(device: str, model: str, when: str, p1: float = 1e-4) -> Calibration:
    return Calibration(device, "hf", model, (0.01, p1, 0.0), (0.02, 1e-3, 1e-6), when, 10,
                       {"prefill_mape": 0.1, "decode_mape": 0.1})


def test_save_and_load_calibrations():
    assert load_calibrations() == {}
    save_calibration(_cal("A100-40GB", "m1", "2024-01-01T00:00:00+00:00"))
    save_calibration(_cal("A100-40GB", "m2", "2024-02-01T00:00:00+00:00", p1=2e-4))
    path = save_calibration(_cal("Some CPU (R) 2.0GHz", "m1", "2024-01-05T00:00:00+00:00"))
    assert path.is_file()
    everything = load_calibrations()
    assert set(everything) == {"A100-40GB", "Some CPU (R) 2.0GHz"}
    assert everything["A100-40GB"].model == "m2"  # the newest per device
    only_m1 = load_calibrations(model="m1")
    assert only_m1["A100-40GB"] == _cal("A100-40GB", "m1", "2024-01-01T00:00:00+00:00")
    assert load_calibrations("vllm") == {}
    # A rewrite of the same device and model replaces it.
    save_calibration(_cal("A100-40GB", "m1", "2024-03-01T00:00:00+00:00", p1=3e-4))
    assert load_calibrations(model="m1")["A100-40GB"].prefill[1] == 3e-4


def test_unreadable_calibration_files_are_skipped():
    from uellm_cli.profile.calibrate import calibrations_dir

    save_calibration(_cal("T4", "m", "2024-01-01"))
    (calibrations_dir() / "hf" / "broken.json").write_text("{not json")
    assert set(load_calibrations()) == {"T4"}


# ---------------------------------------------------------------------------- command


def _app() -> typer.Typer:
    from uellm_cli.commands.profile import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    return app


def test_profile_command_json_for_a_spec():
    from uellm_cli.paths import home_dir

    result = CliRunner().invoke(_app(), ["profile", "--model", "llama-2-13b", "--cluster", "2xA100-40GB:nvlink", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [d["id"] for d in doc["cluster"]["devices"]] == ["cuda:0", "cuda:1"]
    assert doc["cluster"]["links"][0]["kind"] == "nvlink"
    assert doc["model"]["name"] == "llama-2-13b" and doc["model"]["kv_bytes_per_token"] == 2 * 40 * 40 * 128 * 2
    rows = {r["device"]: r for r in doc["memory"]}
    assert rows["cuda:0"]["fits"] is True
    spare = rows["cuda:0"]["memory_bytes"] - doc["model"]["weight_bytes"]
    assert rows["cuda:0"]["kv_tokens"] == spare // doc["model"]["kv_bytes_per_token"]
    stored = json.loads((home_dir() / "profiles" / "profile.json").read_text())
    assert stored["model"] == doc["model"] and stored["cluster"] == doc["cluster"]


def test_profile_command_default_on_this_machine():
    from uellm_cli.profile.document import load_profile_doc, profile_doc_parts

    result = CliRunner().invoke(_app(), ["profile", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"]["name"] == "smollm2-135m"
    assert doc["model"]["dtype"] == "float32"  # CPU only: what the engine will load
    assert any("no GPU found" in n for n in doc["cluster"]["notes"])
    cluster, model, cals = profile_doc_parts(load_profile_doc())
    assert [d.id for d in cluster.devices] == ["cpu"] and model.num_layers == 30 and cals == {}


def test_profile_command_shows_a_stored_calibration():
    from uellm_cli.profile.calibrate import device_name

    save_calibration(_cal(device_name("cpu"), "smollm2-135m", "2024-01-01T00:00:00+00:00"))
    save_calibration(_cal(device_name("cpu"), "other-model", "2025-01-01T00:00:00+00:00"))
    result = CliRunner().invoke(_app(), ["profile", "--json"])
    assert result.exit_code == 0, result.output
    cals = json.loads(result.stdout)["calibrations"]
    assert list(cals) == [device_name("cpu")] and cals[device_name("cpu")]["model"] == "smollm2-135m"


def test_profile_command_bad_cluster_is_a_config_error():
    result = CliRunner().invoke(_app(), ["profile", "--cluster", "3xQ9000"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)


def test_profile_sub_app_takes_sub_commands():
    from uellm_cli.commands.profile import profile_app

    app = _app()

    @profile_app.command("echo-test")
    def _echo() -> None:
        typer.echo("sub-command ran")

    try:
        result = CliRunner().invoke(app, ["profile", "echo-test"])
        assert result.exit_code == 0 and "sub-command ran" in result.stdout
        assert not (result.stdout.lstrip().startswith("{"))  # the profile itself did not run
    finally:
        profile_app.registered_commands = [c for c in profile_app.registered_commands if c.name != "echo-test"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_profile_command_calibrates_a_local_folder(tiny_llama):
    result = CliRunner().invoke(_app(), ["profile", "--model", str(tiny_llama), "--calibrate", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (cal,) = doc["calibrations"].values()
    assert cal["model"] == doc["model"]["name"] == tiny_llama.name
    assert cal["device_name"] == doc["cluster"]["devices"][0]["name"]
    assert cal["samples"] > 0 and all(c >= 0 for c in cal["prefill"] + cal["decode"])
    assert load_calibrations(model=tiny_llama.name)  # stored for run and plan


def test_profile_command_with_a_job_sample(tmp_path, tiny_llama):
    job = tmp_path / "job.jsonl"
    job.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "List three colours." * (i + 1),
                                       "max_new_tokens": 50 + i}) + "\n" for i in range(8)))
    result = CliRunner().invoke(_app(), ["profile", "--model", str(tiny_llama), "--job", str(job), "--json"])
    assert result.exit_code == 0, result.output
    sample = json.loads(result.stdout)["job"]
    assert sample["rows"] == 8 and len(sample["sample"]) == 5
    for i, row in enumerate(sample["sample"]):
        assert row["id"] == f"r{i}" and row["max_new_tokens"] == 50 + i
        assert 0 < row["predicted_tokens"] <= row["predicted_upper"] <= row["max_new_tokens"]


def test_profile_lengths_is_wired_when_present():
    import importlib.util

    if importlib.util.find_spec("uellm_cli.commands.lengths") is None:
        pytest.skip("the lengths sub-command is not written yet")
    result = CliRunner().invoke(_app(), ["profile", "lengths", "--help"])
    assert result.exit_code == 0, result.output
