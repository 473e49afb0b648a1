"""SIGINT and SIGTERM while a run holds its out folder: one guard, two phases.

Before the batches start (reading, planning, loading) a signal stops the run at once, as
Ctrl-C does: KeyboardInterrupt, so the manifest says interrupted, the lock is removed and the
exit status is 130 (SIGTERM's default would kill the process with the manifest still
"running"). Once the batches run (`with interrupts.gently(observer)`), the first signal lets
the batch in flight finish and be written, and a second stops at once (what is on disk stays
valid: the log is append-only and fsynced per batch).

The stop flag is set in both phases: Python swallows a KeyboardInterrupt raised inside a
finalizer (__del__, e.g. during an import), and the flag then still stops the run before its
next step (`raise_if_stopped`); such a swallowed interrupt is not printed as a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from uellm_cli.run.observer import RunObserver

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """The guard (see the module docstring); `stop` is the flag executors watch."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._observer: RunObserver | None = None  # set while the batches run
        self._previous: dict = {}
        self._previous_hook = None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach only the main thread; a library caller keeps its own
        self._previous = {s: signal.getsignal(s) for s in SIGNALS}
        self._previous_hook = sys.unraisablehook
        for s in SIGNALS:
            signal.signal(s, self._handle)
        sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous_hook is not None:
            sys.unraisablehook = self._previous_hook
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    @contextmanager
    def gently(self, observer: RunObserver) -> Iterator[None]:
        """While the batches run: the first signal finishes the current batch."""
        self._observer = observer
        try:
            yield
        finally:
            self._observer = None

    def raise_if_stopped(self) -> None:
        """An interrupt swallowed by a finalizer still stops the run here."""
        if self.stop.is_set():
            raise KeyboardInterrupt

    def _handle(self, signum, frame) -> None:
        observer = self._observer
        if observer is not None and not self.stop.is_set():
            self.stop.set()
            observer.interrupted(second=False)
            return
        if observer is not None:
            observer.interrupted(second=True)
        self.stop.set()
        raise KeyboardInterrupt

    def _unraisable(self, args) -> None:
        if args.exc_type is not None and issubclass(args.exc_type, KeyboardInterrupt):
            return  # recorded in `stop`
        self._previous_hook(args)
