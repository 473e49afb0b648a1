"""`uellm run --backend ray` on a real local Ray (`ray.init(num_cpus=2)`): two CPU replicas of
the tiny model give the local backend's results; an actor killed mid-run (`ray.kill`) and a
driver killed with SIGKILL lose and duplicate nothing.

The reference is the uninterrupted local run of the shared reference job (proc_helpers).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from proc_helpers import (
    BATCH,
    LOG,
    MAX_NEW_TOKENS,
    N_ROWS,
    assert_no_traceback,
    log_lines,
    log_records,
    manifest,
    project,
    results,
    run,
    start_run,
    wait_for,
)

from uellm_cli.run.observer import RunObserver

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")

NAMESPACE = "uellm-tests"


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray with 2 CPUs for this module, on loopback only; tests in this process join it,
    and `uellm run` processes join it through --ray-address."""
    from uellm_cli.ray_backend.driver import loopback_only

    loopback_only()
    ctx = ray.init(num_cpus=2, include_dashboard=False, namespace=NAMESPACE, _node_ip_address="127.0.0.1",
                   object_store_memory=100 * 2**20, logging_level="ERROR", log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


def _ray_args(address: str) -> tuple[str, ...]:
    return ("--backend", "ray", "--ray-address", address, "--replicas", "2")


def _assert_rows_once(out: Path, expected: list[dict]) -> None:
    """The results equal `expected` (ids, text, tokens) in input order, and the log holds each
    row exactly once."""
    rows = results(out)
    assert [r["row"] for r in rows] == list(range(len(expected)))
    assert project(rows) == project(expected)
    counts = Counter(r["index"] for r in log_records(out))
    assert set(counts) == set(range(len(expected))) and set(counts.values()) == {1}, counts


def test_two_cpu_replicas_give_the_local_results(ray_address, ref, tmp_path):
    out = tmp_path / "out"
    res = run(ref.job, out, Path(manifest(ref.out)["model"]["path"]), tmp_path / "home",
              *_ray_args(ray_address))
    assert res.code == 0, res.stderr
    assert_no_traceback(res.stderr)
    _assert_rows_once(out, ref.rows)
    rows = results(out)
    assert {r["replica"] for r in rows} == {0, 1}  # both replicas ran batches
    assert [r["team"] for r in rows] == [r["team"] for r in ref.rows]  # passthrough joins back
    report = json.loads((out / "report.json").read_text())
    assert len(report["plan"]["deployment"]["replicas"]) == 2
    assert report["metrics"]["ok"] == N_ROWS
    assert any(n.startswith("Ray cluster") for n in report["plan"]["notes"])


class _KillBusy(RunObserver):
    """Observer: once batches run, a thread watches the replicas and kills (Ray restarts it)
    the first one it finds in the middle of a batch. An actor runs one call at a time, so a
    `ready()` call that does not return at once is queued behind a running batch."""

    def __init__(self):
        self.killed: str | None = None
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def started(self, plan, rows_total, rows_skipped):
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        actors = [ray.get_actor(a["name"], namespace=NAMESPACE)
                  for a in ray.util.list_named_actors(all_namespaces=True)
                  if "-replica-" in a["name"]]
        while not self.done.is_set():
            for actor in actors:
                idle, _ = ray.wait([actor.ready.remote()], timeout=0.05)
                if not idle:
                    ray.kill(actor, no_restart=False)
                    self.killed = repr(actor)
                    return

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(timeout=30)


def _config(ref, out: Path, **kw):
    from uellm_cli.config import RunConfig

    return RunConfig(job=ref.job, out=out, model=manifest(ref.out)["model"]["path"],
                     max_batch_size=BATCH, max_new_tokens=MAX_NEW_TOKENS, record_history=False,
                     backend="ray", replicas=2, **kw)


# Long batches (the reference job's take ~40 ms: too short to kill or stop reliably).
LONG_BATCH, LONG_TOKENS = 4, 200


def _long_job(ref, tmp_path: Path, rows: int) -> tuple[dict, list[dict]]:
    """A job of `rows` rows with ~0.3 s batches, its run options, and its local results."""
    from proc_helpers import write_job

    from uellm_cli.config import RunConfig
    from uellm_cli.run.pipeline import run_job

    job = write_job(tmp_path / "long.jsonl", n=rows, seed=1)
    options = dict(job=job, model=manifest(ref.out)["model"]["path"], max_batch_size=LONG_BATCH,
                   max_new_tokens=LONG_TOKENS, record_history=False)
    assert run_job(RunConfig(out=tmp_path / "local", **options)).exit_code == 0
    return options, results(tmp_path / "local")


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(ray_address, ref, tmp_path):
    """A kill may land as a batch ends (then nothing is lost, and nothing is tested): up to
    three runs, each checked in full against a local run, until one loses a batch to it."""
    from uellm_cli.config import RunConfig
    from uellm_cli.run.pipeline import run_job

    options, local = _long_job(ref, tmp_path, 16)
    lost = False
    for attempt in range(3):
        out = tmp_path / f"ray{attempt}"
        killer = _KillBusy()
        try:
            outcome = run_job(RunConfig(out=out, backend="ray", replicas=2, **options),
                              observer=killer)
        finally:
            killer.stop()
        assert killer.killed is not None
        assert outcome.exit_code == 0 and outcome.rows_ok == len(local)
        _assert_rows_once(out, local)
        notes = json.loads((out / "report.json").read_text())["plan"]["notes"]
        if any("lost with their replica and run again elsewhere" in n for n in notes):
            lost = True
            break
    assert lost, "in three runs no kill landed in the middle of a batch"


class _StopAfter(RunObserver):
    """Observer: a second Ctrl-C after `n` batches (KeyboardInterrupt out of the run)."""

    def __init__(self, n: int):
        self.n = n

    def batch_done(self, results_, record, at_risk):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt


def test_an_interrupted_ray_run_resumes(ray_address, ref, tmp_path):
    from uellm_cli.run.pipeline import run_job

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(_config(ref, out), observer=_StopAfter(3))
    assert manifest(out)["state"] == "interrupted"
    done = log_lines(out)
    assert 0 < done < N_ROWS
    outcome = run_job(_config(ref, out, resume=True))
    assert outcome.exit_code == 0
    _assert_rows_once(out, ref.rows)


def test_a_killed_driver_resumes_on_ray(ray_address, ref, tmp_path):
    """SIGKILL the `uellm run` process (the driver) mid-run; Ray drops its actors; a rerun with
    --resume finishes the job from the durable log."""
    out = tmp_path / "out"
    model = Path(manifest(ref.out)["model"]["path"])
    proc = start_run(ref.job, out, model, tmp_path / "home", *_ray_args(ray_address))
    wait_for(proc, "4 logged rows", lambda: log_lines(out) >= 4)
    proc.kill9()
    assert log_lines(out) < N_ROWS, "the run ended before the kill"
    res = run(ref.job, out, model, tmp_path / "home", *_ray_args(ray_address), "--resume")
    assert res.code == 0, res.stderr
    assert_no_traceback(res.stderr)
    _assert_rows_once(out, ref.rows)
    assert (out / LOG).exists()


def test_plan_reads_the_cluster_from_ray(ray_address, ref, capsys):
    from clirun import run_cli

    res = run_cli(capsys, "plan", ref.job, "--model", manifest(ref.out)["model"]["path"],
                  "--backend", "ray", "--ray-address", ray_address, "--replicas", "2", "--json")
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    devices = [r["devices"] for r in doc["deployment"]["replicas"]]
    assert sorted(devices) == [["n0/cpu:0"], ["n0/cpu:1"]]  # one node, two CPU slots
    assert any("Ray cluster" in n and "2 CPUs" in n for n in doc["notes"])


def _replica_actors() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if "-replica-" in a["name"]]


def test_ctrl_c_lets_the_ray_batches_in_flight_finish_then_resumes(ray_address, ref, tmp_path):
    """SIGINT to the driver: no new batch starts, the (at most two) batches running finish and
    are written, exit 130 with the manifest `interrupted`; the actors go with the driver, and a
    rerun finishes the job."""
    import signal
    import time

    options, local = _long_job(ref, tmp_path, 32)  # 8 batches of ~0.3 s
    run_options = ("--max-batch-size", str(LONG_BATCH), "--max-new-tokens", str(LONG_TOKENS),
                   "--no-history")
    out, home, model = tmp_path / "out", tmp_path / "home", Path(options["model"])
    proc = start_run(options["job"], out, model, home, *_ray_args(ray_address), options=run_options)
    wait_for(proc, "a batch in the log", lambda: log_lines(out) >= LONG_BATCH)
    proc.signal(signal.SIGSTOP)  # count the lines before the signal, deliver it on SIGCONT
    try:
        before = log_lines(out)
        proc.signal(signal.SIGINT)
    finally:
        proc.signal(signal.SIGCONT)
    assert proc.wait() == 130, proc.stderr()
    assert_no_traceback(proc.stderr())
    assert manifest(out)["state"] == "interrupted"
    assert before <= log_lines(out) <= before + 2 * LONG_BATCH  # a batch per replica, no new one
    end = time.monotonic() + 30
    while _replica_actors() and time.monotonic() < end:
        time.sleep(0.2)
    assert _replica_actors() == []
    res = run(options["job"], out, model, home, *_ray_args(ray_address), options=run_options)
    assert res.code == 0, res.stderr
    _assert_rows_once(out, local)
