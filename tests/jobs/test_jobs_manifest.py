"""Fingerprint, manifest.json, and the fresh / resume / refuse / force decision."""

from __future__ import annotations

import json

import pytest

from uellm_cli.errors import ConfigError, ResumeMismatchError
from uellm_cli.jobs.lock import RunLock
from uellm_cli.jobs.manifest import (
    MANIFEST_NAME,
    Manifest,
    fingerprint,
    option_differences,
    prepare_out_dir,
)
from uellm_cli.jobs.results import RowResult
from uellm_cli.jobs.writers import LOG_NAME, ResultLog, write_results

SHA = "a" * 64
OPTIONS = {
    "model": {"id": "tiny-llama", "config_sha256": "c" * 64},
    "dtype": "float32",
    "max_new_tokens": 64,
    "slo_s": 30.0,
    "sampling": {"temperature": 0.0, "top_p": 1.0, "seed": None, "stop": ["\n\n"]},
    "raw_prompt": False,
    "chat_template_sha256": "t" * 64,
    "seed": 0,
    "policy": "slo-odbs",
}


def _reordered(d):
    if isinstance(d, dict):
        return {k: _reordered(d[k]) for k in reversed(list(d))}
    return d


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value + ["more"]
    if value is None:
        return 1
    raise AssertionError(value)


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_ignores_key_order_and_spelling_of_equal_values():
    fp = fingerprint(SHA, OPTIONS)
    assert fingerprint(SHA, _reordered(OPTIONS)) == fp
    spelled = json.loads(json.dumps(OPTIONS))
    spelled["max_new_tokens"] = 64.0
    spelled["sampling"]["stop"] = ("\n\n",)
    assert fingerprint(SHA, spelled) == fp
    assert len(fp) == 64 and int(fp, 16) >= 0


def _leaves(d, path=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*path, k))
        else:
            yield (*path, k), v


@pytest.mark.parametrize("path", [p for p, _ in _leaves(OPTIONS)], ids=".".join)
def test_fingerprint_changes_with_each_option(path):
    opts = json.loads(json.dumps(OPTIONS))
    target = opts
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = _changed(target[path[-1]])
    assert fingerprint(SHA, opts) != fingerprint(SHA, OPTIONS)
    assert option_differences(OPTIONS, opts) == [".".join(path)]


def test_fingerprint_changes_with_the_file_and_with_added_options():
    fp = fingerprint(SHA, OPTIONS)
    assert fingerprint("b" * 64, OPTIONS) != fp
    assert fingerprint(SHA, {**OPTIONS, "on_miss": "skip"}) != fp
    assert option_differences(OPTIONS, {**OPTIONS, "on_miss": "skip"}) == ["on_miss"]


# ---------------------------------------------------------------- manifest file


def _manifest(fp: str | None = None, options: dict = OPTIONS) -> Manifest:
    return Manifest(fingerprint=fp or fingerprint(SHA, options),
                    input={"path": "jobs.jsonl", "sha256": SHA, "format": "jsonl", "rows": 4},
                    model={"id": "tiny-llama"}, options=options,
                    versions={"uellm": "0.1.0", "torch": "2.13.0"}, rows_total=4)


def test_manifest_roundtrip_and_attempts(tmp_path):
    m = _manifest()
    m.start_attempt(pid=111)
    m.finish("interrupted")
    m.start_attempt(pid=222)
    m.set_counts({0: {"status": "ok"}, 1: {"status": "error"}, 2: {"status": "rejected"}})
    m.save(tmp_path)
    back = Manifest.load(tmp_path)
    assert back == m
    assert back.state == "running" and back.finished_at is None
    assert [(r["pid"], r["state"]) for r in back.runs] == [(111, "interrupted"), (222, "running")]
    assert (back.rows_done, back.rows_error, back.rows_rejected) == (3, 1, 1)
    back.finish("complete")
    assert back.runs[-1]["finished_at"] == back.finished_at is not None
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind


def test_manifest_load_ignores_unknown_keys_and_refuses_garbage(tmp_path):
    assert Manifest.load(tmp_path) is None
    d = _manifest().to_dict()
    d["added_in_a_later_version"] = 1
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    assert Manifest.load(tmp_path).fingerprint == d["fingerprint"]
    (tmp_path / MANIFEST_NAME).write_text('{"half": ')
    with pytest.raises(ResumeMismatchError) as e:
        Manifest.load(tmp_path)
    assert "--force" in e.value.hint


def test_manifest_rejects_an_unknown_state():
    with pytest.raises(ValueError):
        Manifest(fingerprint="x", state="paused")


# ---------------------------------------------------------------- prepare_out_dir


def _previous_run(out, options=OPTIONS):
    """An out folder after an interrupted run: ok, error and rejected rows in the log."""
    m = _manifest(options=options)
    m.start_attempt()
    m.save(out)
    with ResultLog(out) as log:
        log.append([
            RowResult(index=0, id="a", status="ok", output_text="x"),
            RowResult(index=1, id="b", status="error", error_code="oom"),
            RowResult(index=2, id="c", status="rejected", error_code="prompt_too_long"),
        ])
    return m


def test_fresh_folder(tmp_path):
    out = tmp_path / "new" / "run"
    state = prepare_out_dir(out, fingerprint(SHA, OPTIONS), resume=False, force=False,
                            retry_errors=False)
    assert out.is_dir()
    assert not state.is_resume and state.done == {} and state.skip == set()
    assert state.should_run(0)


def test_resume_flag_with_nothing_to_resume_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        prepare_out_dir(tmp_path, "f" * 64, resume=True, force=False, retry_errors=False)
    assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("resume", [False, True])
def test_same_fingerprint_resumes(tmp_path, resume):
    _previous_run(tmp_path)
    state = prepare_out_dir(tmp_path, fingerprint(SHA, _reordered(OPTIONS)), resume=resume,
                            force=False, retry_errors=False)
    assert state.is_resume
    assert set(state.done) == {0, 1, 2}
    assert state.skip == {0, 1, 2} and state.retry == set()
    assert state.should_run(3) and not state.should_run(1)
    assert state.previous is not None and state.previous.state == "running"


def test_retry_errors_reruns_only_failed_rows(tmp_path):
    _previous_run(tmp_path)
    state = prepare_out_dir(tmp_path, fingerprint(SHA, OPTIONS), resume=True, force=False,
                            retry_errors=True)
    assert state.skip == {0, 2} and state.retry == {1}
    assert state.should_run(1) and not state.should_run(0) and not state.should_run(2)


def test_torn_log_tail_is_reported_on_resume(tmp_path):
    _previous_run(tmp_path)
    with open(tmp_path / LOG_NAME, "ab") as f:
        f.write(b'{"index": 3, "sta')
    state = prepare_out_dir(tmp_path, fingerprint(SHA, OPTIONS), resume=True, force=False,
                            retry_errors=False)
    assert set(state.done) == {0, 1, 2} and state.torn_bytes == len(b'{"index": 3, "sta')


def test_other_options_are_refused_with_their_names(tmp_path):
    _previous_run(tmp_path)
    new = {**OPTIONS, "dtype": "bfloat16", "sampling": {**OPTIONS["sampling"], "seed": 7}}
    with pytest.raises(ResumeMismatchError) as e:
        prepare_out_dir(tmp_path, fingerprint(SHA, new), resume=False, force=False,
                        retry_errors=False, file_sha256=SHA, options=new)
    msg = str(e.value)
    assert "dtype" in msg and "sampling.seed" in msg
    assert "input file" not in msg and "max_new_tokens" not in msg
    assert "\n" not in msg
    assert "--force" in e.value.hint and "--out" in e.value.hint
    assert (tmp_path / LOG_NAME).exists()  # nothing touched


def test_other_input_file_is_refused(tmp_path):
    _previous_run(tmp_path)
    with pytest.raises(ResumeMismatchError) as e:
        prepare_out_dir(tmp_path, fingerprint("b" * 64, OPTIONS), resume=True, force=False,
                        retry_errors=False, file_sha256="b" * 64, options=OPTIONS)
    assert "input file changed" in str(e.value) and "options" not in str(e.value)


def test_mismatch_without_details_still_refuses(tmp_path):
    _previous_run(tmp_path)
    with pytest.raises(ResumeMismatchError):
        prepare_out_dir(tmp_path, "0" * 64, resume=False, force=False, retry_errors=False)


def test_log_without_manifest_is_refused(tmp_path):
    with ResultLog(tmp_path) as log:
        log.append([RowResult(index=0, id="a", status="ok")])
    with pytest.raises(ResumeMismatchError):
        prepare_out_dir(tmp_path, "0" * 64, resume=False, force=False, retry_errors=False)


def test_force_moves_the_old_run_aside(tmp_path):
    with RunLock(tmp_path) as lock:
        _previous_run(tmp_path)
        write_results(tmp_path, [{"index": 0, "id": "a", "status": "ok"}])
        (tmp_path / "jobs.jsonl").write_text('{"id": "a", "prompt": "hi"}\n')  # user's file
        log_before = (tmp_path / LOG_NAME).read_bytes()
        state = prepare_out_dir(tmp_path, "0" * 64, resume=False, force=True,
                                retry_errors=False)
        assert not state.is_resume and state.done == {}
        old = state.moved_to
        assert old is not None and old.parent == tmp_path and old.name.startswith(".old-")
        assert (old / LOG_NAME).read_bytes() == log_before
        assert {p.name for p in old.iterdir()} == {MANIFEST_NAME, LOG_NAME, "results.parquet"}
        assert not (tmp_path / MANIFEST_NAME).exists() and not (tmp_path / LOG_NAME).exists()
        assert (tmp_path / "jobs.jsonl").exists()  # not ours: left in place
        assert lock.path.exists()  # the lock stays with the running process
        # a second --force keeps the first backup and makes another
        _previous_run(tmp_path)
        again = prepare_out_dir(tmp_path, "0" * 64, force=True)
        assert again.moved_to != old and old.exists() and (again.moved_to / LOG_NAME).exists()


def test_force_and_resume_contradict(tmp_path):
    with pytest.raises(ConfigError):
        prepare_out_dir(tmp_path, "0" * 64, resume=True, force=True, retry_errors=False)
