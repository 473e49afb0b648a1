"""Planning in a forked child while the parent imports the engine (run/overlap.py)."""

from __future__ import annotations

import os
import time

import pytest

from uellm_cli.errors import ConfigError
from uellm_cli.run.overlap import plan_while

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")


@pytest.fixture
def forked(monkeypatch) -> list[int]:
    """The pids plan_while forks (os.fork recorded, not replaced)."""
    pids: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return pids


def _unreaped(pids: list[int]) -> list[int]:
    """Those of `pids` still this process's children (running, or a zombie not waited for)."""
    left = []
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        left.append(pid)
    return left


def test_the_plan_is_made_in_a_child_while_the_parent_does_its_work(forked):
    parent = os.getpid()
    here: list[float] = []

    def plan():
        start = time.monotonic()  # one clock for every process
        time.sleep(0.3)
        return {"pid": os.getpid(), "rows": list(range(1000)), "span": (start, time.monotonic())}

    def meanwhile():
        here.append(time.monotonic())
        time.sleep(0.3)
        here.append(time.monotonic())

    got = plan_while(plan, meanwhile)
    assert got["pid"] != parent and got["rows"] == list(range(1000))
    (child_start, child_end), (here_start, here_end) = got["span"], here
    assert max(child_start, here_start) < min(child_end, here_end), "they ran side by side"
    assert len(forked) == 1 and _unreaped(forked) == []


def test_without_work_to_overlap_the_plan_is_made_here():
    assert plan_while(os.getpid, None) == os.getpid()


def test_a_plan_that_fails_in_the_child_is_made_again_here_and_raises_here(forked):
    calls: list[int] = []

    def plan():
        calls.append(os.getpid())  # the child's append is lost with it; the parent's stays
        raise ConfigError("no deployment fits", hint="a hint")

    with pytest.raises(ConfigError, match="no deployment fits") as err:
        plan_while(plan, lambda: None)
    assert err.value.hint == "a hint"
    assert calls == [os.getpid()]
    assert len(forked) == 1 and _unreaped(forked) == []


def test_a_plan_that_does_not_pickle_is_made_here(forked):
    made_in: list[int] = []

    def plan():
        made_in.append(os.getpid())
        return lambda: "unpicklable"

    got = plan_while(plan, lambda: None)
    assert got() == "unpicklable"
    assert made_in == [os.getpid()]  # the child's attempt is not in this process's list
    assert len(forked) == 1 and _unreaped(forked) == []


def test_an_interrupt_in_the_parent_ends_the_child_and_is_raised(forked):
    def plan():
        time.sleep(30)
        return "never"

    def meanwhile():
        raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        plan_while(plan, meanwhile)
    assert time.monotonic() - t0 < 5, "the child was not left planning for 30 s"
    assert len(forked) == 1 and _unreaped(forked) == []
