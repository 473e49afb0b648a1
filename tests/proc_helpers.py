"""Real `uellm run` processes for the survival tests: start, watch the out folder, kill, compare.

Every run is `python -m uellm_cli run ...` in its own process (no test hooks in the product):
a test waits for the out folder to reach a state (manifest written, K result lines logged)
and then kills or signals the process. The uninterrupted reference run is made once per
session and shared by every module (`reference_run`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

N_ROWS = 40
MAX_NEW_TOKENS = 24
BATCH = 2
# Options every run of the reference job uses (same options -> same fingerprint -> resumable).
RUN_OPTIONS = ("--max-batch-size", str(BATCH), "--max-new-tokens", str(MAX_NEW_TOKENS),
               "--no-history")
PROC_TIMEOUT_S = 180.0  # a hung process fails the test instead of hanging the suite
POLL_S = 0.005

LOG = "results.log.jsonl"
MANIFEST = "manifest.json"
LOCK = ".uellm.lock"
COMPARED = ("id", "status", "output_text", "output_tokens", "finish_reason", "prompt_tokens")

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "deadline", "job",
         "must", "finish", "large", "language", "models", "generate", "text", "one", "token",
         "at", "a", "time", "batches", "of", "prompts", "run", "together", "sea", "blue"]


def write_job(path: Path, n: int = N_ROWS, seed: int = 0) -> Path:
    """A JSONL job of `n` plain prompts of varied length (so batches pad differently)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(3 + (i * 7) % 11))
        lines.append(json.dumps({"id": f"row-{i:03d}", "prompt": prompt, "team": f"t{i % 3}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def env(home: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", UELLM_HOME=str(home), HF_HUB_OFFLINE="1",
             TRANSFORMERS_OFFLINE="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    e.pop("UELLM_DEBUG", None)
    return e


@dataclass
class Proc:
    """A running `uellm run`; its stdout/stderr go to files so a full pipe never blocks it."""

    popen: subprocess.Popen
    out: Path
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait(self, timeout: float = PROC_TIMEOUT_S) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(
                f"uellm run did not end within {timeout}s; stderr:\n{self.stderr()}") from None

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def kill9(self) -> int:
        self.popen.send_signal(signal.SIGKILL)
        return self.wait()


_counter = iter(range(1_000_000))


def start_run(job: Path, out: Path, model: Path, home: Path, *extra: str,
              options: tuple[str, ...] = RUN_OPTIONS, quiet: bool = True) -> Proc:
    """Start `python -m uellm_cli run job --out out --model model <options> <extra>`."""
    n = next(_counter)
    logs = out.parent / f"{out.name}.proc{n}"
    args = [sys.executable, "-m", "uellm_cli", "run", str(job), "--out", str(out),
            "--model", str(model), *options, *extra]
    if quiet:
        args.append("-q")
    so, se = Path(f"{logs}.stdout"), Path(f"{logs}.stderr")
    with so.open("wb") as fo, se.open("wb") as fe:
        popen = subprocess.Popen(args, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                 env=env(home), cwd=out.parent)
    return Proc(popen, out, so, se)


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str


def run(job: Path, out: Path, model: Path, home: Path, *extra: str,
        options: tuple[str, ...] = RUN_OPTIONS, quiet: bool = True) -> Finished:
    """Run to the end and return exit status and output."""
    p = start_run(job, out, model, home, *extra, options=options, quiet=quiet)
    code = p.wait()
    return Finished(code, p.stdout(), p.stderr())


def wait_for(proc: Proc, what: str, predicate, timeout: float = PROC_TIMEOUT_S) -> None:
    """Poll until predicate() holds; fail if the process ends first (the kill point was missed)."""
    end = time.monotonic() + timeout
    while not predicate():
        if proc.popen.poll() is not None:
            raise AssertionError(f"uellm run ended (status {proc.popen.returncode}) before {what}; "
                                 f"stderr:\n{proc.stderr()}")
        if time.monotonic() > end:
            proc.popen.kill()
            proc.popen.wait()
            raise AssertionError(f"timed out waiting for {what}; stderr:\n{proc.stderr()}")
        time.sleep(POLL_S)


def log_records(out: Path) -> list[dict]:
    """Complete lines of the result log, in order (a torn last line is not a record)."""
    try:
        data = (out / LOG).read_bytes()
    except FileNotFoundError:
        return []
    data = data[: data.rfind(b"\n") + 1]
    return [json.loads(x) for x in data.split(b"\n") if x.strip()]


def log_lines(out: Path) -> int:
    try:
        return (out / LOG).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


def results(out: Path) -> list[dict]:
    return pq.read_table(out / "results.parquet").to_pylist()


def project(rows: list[dict]) -> list[tuple]:
    """What must not depend on how the run was split up: ids, statuses and outputs, in order."""
    return [tuple(r[k] for k in COMPARED) for r in rows]


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, text
    assert "internal error" not in text, text


@dataclass
class Reference:
    job: Path
    out: Path
    rows: list[dict]
    log: list[dict]


_REFERENCE: dict[str, Reference] = {}


def reference_run(model: Path, tmp_path_factory) -> Reference:
    """The uninterrupted run of the reference job, made once per session (memoised here,
    since a fixture imported into several modules would run once per module)."""
    key = str(model)
    if key not in _REFERENCE:
        base = tmp_path_factory.mktemp("reference")
        job = write_job(base / "job.jsonl")
        out = base / "out"
        res = run(job, out, model, base / "home")
        assert res.code == 0, res.stderr
        rows = results(out)
        assert len(rows) == N_ROWS and all(r["status"] == "ok" for r in rows)
        _REFERENCE[key] = Reference(job, out, rows, log_records(out))
    return _REFERENCE[key]


def copy_run(ref: Reference, dest: Path) -> Path:
    """A copy of the reference out folder (the job path in the manifest stays the same)."""
    shutil.copytree(ref.out, dest)
    return dest


def file_bytes(folder: Path, names=(LOG, MANIFEST, "results.parquet", "errors.jsonl")) -> dict:
    return {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}
