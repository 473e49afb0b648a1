"""Planning in a forked child while this process imports the engine.

vLLM takes 4 s to import on a 2-core CPU and planning a 1,000-row job 2 s; both are Python
under one interpreter lock, so a thread would not overlap them (measured: 5.6 s together
against 5.5 s one after the other). A child forked before the import plans on a core of its
own and sends its plan back through a pipe while this process imports. Planning needs no
torch and no engine (numpy at most, for the length predictor), which is what makes a fork of
it safe. When the child sends no plan (it raised, its plan does not pickle, it was killed,
or there is no fork), the plan is made here as before, so an error is raised here as it
always was.
"""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def plan_while(plan: Callable[[], T], meanwhile: Callable[[], object] | None) -> T:
    """plan(), made in a forked child while `meanwhile()` runs here (None: plan() here)."""
    if meanwhile is None or not hasattr(os, "fork"):
        return plan()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: it never returns
        os.close(read_fd)
        _answer(plan, write_fd)
    os.close(write_fd)
    try:
        meanwhile()
        answer = _receive(read_fd)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # the parent stops: so does its planning
        raise
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    return plan() if answer is None else answer


def _answer(plan: Callable[[], object], write_fd: int) -> None:
    """In the child: the plan pickled into the pipe (nothing when it fails), then exit at once,
    without the parent's exit handlers. Interrupts are the parent's to handle."""
    code = 1
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        payload = pickle.dumps(plan(), protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
        code = 0
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child; the parent plans
        pass
    finally:
        os._exit(code)


def _receive(read_fd: int) -> object | None:
    """The child's plan, or None when it sent none that unpickles."""
    chunks = []
    while chunk := os.read(read_fd, 1 << 20):
        chunks.append(chunk)
    if not chunks:
        return None
    try:
        return pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001 - a child killed mid-answer
        return None
