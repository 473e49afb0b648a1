"""RunLock: a live holder is refused at once; a dead or unreadable one is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import uellm_cli
from uellm_cli.errors import LockedError
from uellm_cli.jobs.lock import LOCK_NAME, RunLock

HOLDER = """
import sys, time
from uellm_cli.jobs.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A real process holding the lock on tmp_path/out until killed."""
    out = tmp_path / "out"
    src = str(Path(uellm_cli.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "locked", proc.stderr.read()
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_live_holder_is_refused_then_a_dead_one_is_taken_over(holder):
    proc, out = holder
    info = json.loads((out / LOCK_NAME).read_text())
    assert info["pid"] == proc.pid and info["hostname"] == socket.gethostname()

    with pytest.raises(LockedError) as e:
        RunLock(out).acquire()
    assert f"pid {proc.pid}" in str(e.value) and str(out) in str(e.value)
    assert (out / LOCK_NAME).exists()  # the refusal does not touch the holder's lock

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with RunLock(out) as lock:
        assert lock.took_over_stale
        assert lock.previous_holder["pid"] == proc.pid
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


def test_acquire_release_and_second_acquire_in_a_live_process(tmp_path):
    with RunLock(tmp_path / "out") as lock:
        assert lock.held and not lock.took_over_stale
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        other = RunLock(tmp_path / "out")
        with pytest.raises(LockedError):
            other.acquire()
        assert not other.held
    assert not lock.path.exists() and not lock.held
    assert list((tmp_path / "out").iterdir()) == []  # no temp files left


def test_released_on_exception(tmp_path):
    with pytest.raises(RuntimeError), RunLock(tmp_path) as lock:
        raise RuntimeError("batch crashed")
    assert not lock.path.exists()
    with RunLock(tmp_path) as again:
        assert not again.took_over_stale


@pytest.mark.parametrize("content", [b"", b"garbage", b"[1, 2]", b'{"pid": "x"}'])
def test_unreadable_lock_is_taken_over(tmp_path, content):
    (tmp_path / LOCK_NAME).write_bytes(content)
    with RunLock(tmp_path) as lock:
        assert lock.took_over_stale
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/stat").exists(), reason="needs /proc")
def test_a_reused_pid_does_not_keep_the_lock(tmp_path):
    # Our own pid is alive, but the lock says it started at another time: another process.
    info = {"pid": os.getpid(), "hostname": socket.gethostname(), "started_at": "then",
            "proc_start": 1, "boot_id": None}
    (tmp_path / LOCK_NAME).write_text(json.dumps(info))
    with RunLock(tmp_path) as lock:
        assert lock.took_over_stale


def test_a_lock_from_another_host_is_refused(tmp_path):
    info = {"pid": 1, "hostname": socket.gethostname() + "-elsewhere", "started_at": "then"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(info))
    with pytest.raises(LockedError) as e:
        RunLock(tmp_path).acquire()
    assert "-elsewhere" in str(e.value) and LOCK_NAME in e.value.hint


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock = RunLock(tmp_path).acquire()
    theirs = {"pid": 12345, "hostname": "h", "token": "someone-else"}
    lock.path.write_text(json.dumps(theirs))
    lock.release()
    assert json.loads(lock.path.read_text()) == theirs


@pytest.mark.skipif(not hasattr(os, "waitid"), reason="needs os.waitid")
def test_a_killed_but_unreaped_holder_counts_as_dead(holder):
    proc, out = holder
    proc.send_signal(signal.SIGKILL)
    # Wait for the exit without reaping it: the holder is now a zombie whose pid still
    # answers os.kill(pid, 0).
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    os.kill(proc.pid, 0)
    with RunLock(out) as lock:
        assert lock.took_over_stale and lock.previous_holder["pid"] == proc.pid
