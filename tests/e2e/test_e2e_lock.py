"""One writer per --out: a second `uellm run` refuses at once while the first lives, and the
lock a dead run left behind is taken over."""

from __future__ import annotations

import json
import signal
from collections import Counter

from proc_helpers import (
    BATCH,
    LOCK,
    LOG,
    MANIFEST,
    N_ROWS,
    assert_no_traceback,
    file_bytes,
    log_lines,
    log_records,
    manifest,
    project,
    results,
    run,
    start_run,
    wait_for,
)


def _assert_complete_and_equal(out, ref) -> None:
    assert project(results(out)) == project(ref.rows)
    assert Counter(r["index"] for r in log_records(out)) == Counter(range(N_ROWS))
    assert manifest(out)["state"] == "complete"
    assert not (out / LOCK).exists()


def test_second_run_refused_while_the_first_lives(tmp_path, tiny_llama, ref):
    """Then the first is killed: its lock file (written by jobs/lock.py, naming a pid that no
    longer exists) is stale, and the next run takes it over and completes the job."""
    out, home = tmp_path / "out", tmp_path / "home"
    holder = start_run(ref.job, out, tiny_llama, home)
    wait_for(holder, "a batch in the log", lambda: log_lines(out) >= BATCH)
    # Freeze the holder mid-run: it stays alive and holding the lock, and nothing changes
    # in the folder while the second run looks at it.
    holder.signal(signal.SIGSTOP)
    try:
        lock = json.loads((out / LOCK).read_text())
        assert lock["pid"] == holder.pid
        before = file_bytes(out, (LOCK, LOG, MANIFEST))
        second = run(ref.job, out, tiny_llama, home)
        assert holder.popen.poll() is None  # the second run did not wait for the first
        assert second.code == 2, second.stderr
        assert_no_traceback(second.stderr)
        errors = [x for x in second.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == 1, second.stderr
        assert f"pid {holder.pid}" in errors[0] and str(out) in errors[0]
        assert file_bytes(out, (LOCK, LOG, MANIFEST)) == before  # refused before touching anything
    finally:
        code = holder.kill9()  # a stopped process dies of SIGKILL too
    assert code == -9
    # The dead holder's lock is still there; the next run takes it over and finishes the job.
    assert json.loads((out / LOCK).read_text())["pid"] == holder.pid
    assert manifest(out)["state"] == "running"
    res = run(ref.job, out, tiny_llama, home, quiet=False)
    assert res.code == 0, res.stderr
    assert_no_traceback(res.stderr)
    assert "took over a stale lock" in res.stderr
    _assert_complete_and_equal(out, ref)
    assert [r["state"] for r in manifest(out)["runs"]] == ["running", "complete"]
