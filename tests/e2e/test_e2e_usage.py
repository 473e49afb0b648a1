"""Usage errors through the real entry point: a mistyped option, an --out that cannot be a run
folder, a folder another run holds. Each is one line and exit 2, before the job is read."""

from __future__ import annotations

import json
import os

import pytest
from clirun import run_cli

from uellm_cli.jobs.lock import RunLock
from uellm_cli.run import prepare


@pytest.fixture()
def job(tmp_path):
    path = tmp_path / "job.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "Hello", "max_new_tokens": 2}) + "\n")
    return path


@pytest.fixture()
def no_reading(monkeypatch):
    """Fails the test if the run gets as far as reading its job."""
    def read(*_a, **_k):
        raise AssertionError("the job was read before the usage error")

    monkeypatch.setattr(prepare, "read", read)


def _one_error_line(res) -> str:
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    errors = [ln for ln in res.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.err
    return errors[0]


@pytest.mark.parametrize(("argv", "says"), [
    (("run", "JOB", "--bogus"), "No such option: --bogus"),
    (("profile", "--threads", "1"), "No such option: --threads"),
    (("plan", "JOB", "--cluster"), "'--cluster' requires an argument"),
])
def test_a_mistyped_option_is_a_usage_error(argv, says, job, capsys):
    res = run_cli(capsys, *[str(job) if a == "JOB" else a for a in argv])
    assert res.code == 2, res.err
    assert says in res.err and "internal error" not in res.err and "Traceback" not in res.err


def test_out_naming_a_file_is_refused_before_reading(tmp_path, job, capsys, no_reading):
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    res = run_cli(capsys, "run", job, "--model", "tiny", "--out", out)
    assert res.code == 2
    assert "is a file, not a folder" in _one_error_line(res)
    assert out.read_text() == "not a folder"


def test_out_under_a_file_is_refused_before_reading(tmp_path, job, capsys, no_reading):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_cli(capsys, "run", job, "--model", "tiny", "--out", blocker / "out")
    assert res.code == 2
    assert "is a file" in _one_error_line(res)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_folder_this_user_cannot_write_is_refused(tmp_path, job, capsys, no_reading):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        res = run_cli(capsys, "run", job, "--model", "tiny", "--out", parent / "out")
    finally:
        parent.chmod(0o700)
    assert res.code == 2
    assert "cannot write" in _one_error_line(res)


def test_a_folder_a_live_run_holds_is_refused_before_reading(tmp_path, job, capsys, no_reading):
    out = tmp_path / "out"
    with RunLock(out):  # this (live) process holds it
        res = run_cli(capsys, "run", job, "--model", "tiny", "--out", out)
        assert (out / ".uellm.lock").exists()
    assert res.code == 2
    assert f"pid {os.getpid()}" in _one_error_line(res)
