"""A nightly `uellm run` survives kill -9, refuses to mix runs, and retries failed rows.

Real processes on the tiny model: each test starts `python -m uellm_cli run`, watches the out
folder (manifest written, K lines in results.log.jsonl), kills it there, reruns, and compares
the final results with one uninterrupted run of the same job.
"""

from __future__ import annotations

import json
from collections import Counter

from proc_helpers import (
    BATCH,
    LOCK,
    LOG,
    MANIFEST,
    MAX_NEW_TOKENS,
    N_ROWS,
    assert_no_traceback,
    copy_run,
    file_bytes,
    log_lines,
    log_records,
    manifest,
    project,
    results,
    run,
    start_run,
    wait_for,
    write_job,
)


def _assert_matches_reference(out, ref) -> None:
    rows = results(out)
    assert [r["row"] for r in rows] == list(range(N_ROWS))  # every row once, in input order
    assert project(rows) == project(ref.rows)
    assert [r["team"] for r in rows] == [r["team"] for r in ref.rows]  # passthrough kept
    counts = Counter(rec["index"] for rec in log_records(out))
    assert counts == Counter(range(N_ROWS)), "a row ran twice or never (results.log.jsonl)"
    m = manifest(out)
    assert m["state"] == "complete"
    assert m["rows_done"] == m["rows_total"] == N_ROWS
    assert not (out / LOCK).exists()


def test_kill_9_at_several_points_then_resume(tmp_path, tiny_llama, ref):
    """Killed before any result, after the first batch, and about half way: each rerun picks
    up what the log holds, and the end result equals the uninterrupted run."""
    out, home = tmp_path / "out", tmp_path / "home"
    # (extra flags of this attempt, log lines to wait for before kill -9)
    attempts = [
        ((), 0),  # killed right after the manifest appears: nothing run yet
        ((), 1),  # a plain rerun (no --resume) continues, killed after its first batch
        (("--resume",), N_ROWS // 2),  # killed about half way
    ]
    seen_before = 0
    for n, (extra, lines) in enumerate(attempts, start=1):
        p = start_run(ref.job, out, tiny_llama, home, *extra)
        target = seen_before + lines
        if lines == 0:
            wait_for(p, "manifest.json", lambda: (out / MANIFEST).exists())
        else:
            wait_for(p, f"{target} log lines", lambda t=target: log_lines(out) >= t)
        assert p.kill9() == -9, p.stderr()
        m = manifest(out)
        assert m["state"] == "running"  # what kill -9 leaves: nobody could write more
        assert len(m["runs"]) == n
        recs = log_records(out)
        assert len(recs) >= target
        if lines == 0:
            assert recs == [], "meant to kill before the first result"
        assert len(recs) < N_ROWS, "the run finished before the kill point"
        dup = [i for i, c in Counter(r["index"] for r in recs).items() if c > 1]
        assert not dup, f"rows logged twice: {dup}"
        for rec in recs:  # what is logged is a finished row, equal to the reference
            assert rec["status"] == "ok"
            assert rec["output_text"] == ref.rows[rec["index"]]["output_text"]
        seen_before = len(recs)
    assert seen_before > N_ROWS // 2 - 1

    res = run(ref.job, out, tiny_llama, home, "--resume")
    assert res.code == 0, res.stderr
    assert_no_traceback(res.stderr)
    _assert_matches_reference(out, ref)
    m = manifest(out)
    assert len(m["runs"]) == len(attempts) + 1
    assert [r["state"] for r in m["runs"]] == ["running"] * len(attempts) + ["complete"]
    assert len({r["pid"] for r in m["runs"]}) == len(m["runs"])


def test_rerun_refuses_other_input_or_options(tmp_path, tiny_llama, ref):
    """A changed input file or a changed --max-new-tokens is refused (status 2, one line
    naming what differs, old files untouched); --force starts over and moves the old run aside."""
    home = tmp_path / "home"
    changed_job = write_job(tmp_path / "job.jsonl", n=N_ROWS, seed=1)
    out_a, out_b = copy_run(ref, tmp_path / "a"), copy_run(ref, tmp_path / "b")
    before = file_bytes(out_a)
    assert before == file_bytes(out_b)
    pa = start_run(changed_job, out_a, tiny_llama, home)
    options = ("--max-batch-size", str(BATCH), "--max-new-tokens", str(MAX_NEW_TOKENS - 1),
               "--no-history")
    pb = start_run(ref.job, out_b, tiny_llama, home, options=options)
    code_a, code_b = pa.wait(), pb.wait()

    for code, p, what in ((code_a, pa, "the input file changed"),
                          (code_b, pb, "options changed: max_new_tokens")):
        err = p.stderr()
        assert code == 2, err
        assert_no_traceback(err)
        assert what in err, err
        assert "--force" in err  # the way out is named
        error_lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(error_lines) == 1 and what in error_lines[0], err
    assert "options changed" not in pa.stderr()  # only what differs is named
    assert "input file changed" not in pb.stderr()
    assert file_bytes(out_a) == before and file_bytes(out_b) == before
    assert not (out_a / LOCK).exists() and not (out_b / LOCK).exists()

    res = run(changed_job, out_a, tiny_llama, home, "--force")
    assert res.code == 0, res.stderr
    old = [d for d in out_a.iterdir() if d.name.startswith(".old-")]
    assert len(old) == 1 and old[0].is_dir()
    assert file_bytes(old[0]) == before  # moved aside, byte for byte
    new_rows = results(out_a)
    assert [r["id"] for r in new_rows] == [r["id"] for r in ref.rows]
    assert [r["output_text"] for r in new_rows] != [r["output_text"] for r in ref.rows]
    m = manifest(out_a)
    assert m["state"] == "complete" and len(m["runs"]) == 1
    assert m["input"]["sha256"] != json.loads(before[MANIFEST])["input"]["sha256"]
    assert Counter(r["index"] for r in log_records(out_a)) == Counter(range(N_ROWS))


def test_retry_errors_reruns_only_failed_rows(tmp_path, tiny_llama, ref):
    """A row the log records as failed at execution runs again with --retry-errors; ok rows
    are left alone (the log gains exactly one line: the retried row's new record)."""
    out = copy_run(ref, tmp_path / "out")
    failed = 7
    lines = (out / LOG).read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[0])  # any record gives the real layout; make it row `failed`'s error
    src = next(json.loads(x) for x in lines if json.loads(x)["index"] == failed)
    error = dict(rec, **{k: src[k] for k in ("index", "id", "team") if k in src})
    error.update(status="error", output_text=None, output_tokens=None, finish_reason=None,
                 error_code="engine_error", error_message="RuntimeError: injected by the test")
    with (out / LOG).open("ab") as f:
        f.write((json.dumps(error) + "\n").encode())
    before = (out / LOG).read_bytes()

    res = run(ref.job, out, tiny_llama, tmp_path / "home", "--retry-errors")
    assert res.code == 0, res.stderr
    assert_no_traceback(res.stderr)
    after = (out / LOG).read_bytes()
    assert after.startswith(before)  # append-only: nothing rewritten
    added = [json.loads(x) for x in after[len(before):].splitlines()]
    assert [a["index"] for a in added] == [failed]
    assert added[0]["status"] == "ok"
    assert added[0]["output_text"] == ref.rows[failed]["output_text"]
    rows = results(out)
    assert project(rows) == project(ref.rows)
    assert manifest(out)["rows_error"] == 0
