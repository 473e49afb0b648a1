"""ReplicaWorker in-process (no Ray): the same results as the local executor, times on the
driver's clock, and a node whose model files differ from the driver's is refused."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace

import pytest

from uellm_cli.engine.executor import Executor
from uellm_cli.engine.hf_engine import HFEngine
from uellm_cli.engine.loader import LoadOptions
from uellm_cli.engine.models import (
    ResolvedModel,
    folder_revision,
    load_model,
    load_tokenizer,
    resolve_model,
)
from uellm_cli.engine.rows import PreparedRow
from uellm_cli.errors import ModelNotFoundError
from uellm_cli.jobs.schema import Row
from uellm_cli.plan.types import PlannedBatch
from uellm_cli.ray_backend.worker import ReplicaWorker, WorkerSpec

PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.",
           "List three colours:"]


def spec_for(model: str, resolved: ResolvedModel, replica: int = 3) -> WorkerSpec:
    return WorkerSpec(replica=replica, model=model, resolved=resolved, device_map=None,
                      load=LoadOptions(threads=1), fail_fast=False)


def prepared_rows(resolved: ResolvedModel) -> list[PreparedRow]:
    encoder = HFEngine(load_tokenizer(resolved))
    rows = [Row(index=10 + k, line=k + 1, id=f"q{k}", prompt=p, messages=None, deadline_s=None,
                max_new_tokens=4 + k, passthrough={"k": k}) for k, p in enumerate(PROMPTS)]
    return [PreparedRow(r, encoder.encode(r), r.max_new_tokens) for r in rows]


PLANNED = PlannedBatch(batch=7, replica=3, rows=[10, 11, 12], max_new_tokens=6, start_s=0.0,
                       finish_s=1.0)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    resolved = resolve_model(str(tiny_llama))
    return resolved, ReplicaWorker(spec_for(str(tiny_llama), resolved))


def test_worker_results_equal_the_local_executor(llama):
    resolved, worker = llama
    members = prepared_rows(resolved)
    got, record = worker.run_batch(PLANNED, members, epoch0=time.time())

    model = load_model(resolved, threads=1)
    local = Executor({3: HFEngine(load_tokenizer(resolved), model)}, clock=time.monotonic)
    want, want_record = local.run_one(3, PLANNED, members)

    assert [r.index for r in got] == [10, 11, 12]
    for g, w in zip(got, want, strict=True):
        assert g.status == w.status == "ok"
        assert (g.output_text, g.output_tokens, g.finish_reason, g.prompt_tokens) == \
               (w.output_text, w.output_tokens, w.finish_reason, w.prompt_tokens)
        assert (g.replica, g.batch) == (3, 7)
    assert any(r.output_tokens for r in got)  # the comparison covered generated text
    assert (record.batch, record.replica, record.rows) == (7, 3, [10, 11, 12])
    assert (record.steps, record.output_tokens) == (want_record.steps, want_record.output_tokens)


def test_worker_times_are_on_the_drivers_run_clock(llama):
    resolved, worker = llama
    members = prepared_rows(resolved)[:1]
    epoch0 = time.time() - 100.0  # the run started 100 s ago
    before = time.time() - epoch0
    results, record = worker.run_batch(PLANNED, members, epoch0=epoch0)
    after = time.time() - epoch0
    (r,) = results
    assert 0 <= before <= record.started_s <= r.started_s <= r.finished_s <= record.finished_s <= after
    assert r.latency_s == r.finished_s


def test_ready_says_which_replica_it_is(llama):
    _, worker = llama
    info = worker.ready()
    assert info["replica"] == 3 and info["load_s"] >= 0 and info["host"]


def test_a_node_without_the_drivers_folder_loads_the_same_model_by_name(tiny_llama, tmp_path):
    driver = resolve_model(str(tiny_llama))
    copy = tmp_path / "same"
    shutil.copytree(tiny_llama, copy)
    gone = replace(driver, path=tmp_path / "not-on-this-node")
    worker = ReplicaWorker(spec_for(str(copy), gone, replica=0))
    members = prepared_rows(driver)[:1]
    (r,), _ = worker.run_batch(replace(PLANNED, replica=0), members, epoch0=time.time())
    assert r.status == "ok"


def test_a_node_whose_model_files_differ_is_refused(tiny_llama, tmp_path):
    driver = resolve_model(str(tiny_llama))
    other = tmp_path / "other"
    shutil.copytree(tiny_llama, other)
    with (other / "config.json").open("a") as f:
        f.write("\n")  # same model, different bytes: a different revision
    assert folder_revision(other) != driver.revision
    gone = replace(driver, path=tmp_path / "not-on-this-node")
    with pytest.raises(ModelNotFoundError, match="revision"):
        ReplicaWorker(spec_for(str(other), gone, replica=0))
