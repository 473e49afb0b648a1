"""One writer per run folder: `<out>/.uellm.lock` holds the pid of the run writing there.

A second `uellm run` into the same --out refuses at once while the holder lives. A lock left
by a dead process (kill -9, reboot, a reused pid) or an unreadable lock file is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from pathlib import Path

from uellm_cli.errors import LockedError
from uellm_cli.jobs.manifest import now_iso

LOCK_NAME = ".uellm.lock"


def _boot_id() -> str | None:
    """Changes at each reboot (Linux), so a lock from before a reboot is known stale."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    rest = text[text.rfind(")") + 2:].split()
    try:
        return rest[0], int(rest[19])
    except (IndexError, ValueError):
        return None


def _holder_alive(info: dict) -> bool:
    """Whether the process named in a lock file still runs (assumed so on another host)."""
    if info.get("hostname") != socket.gethostname():
        return True  # cannot see it from here; refuse rather than risk two writers
    if info.get("boot_id") and _boot_id() and info["boot_id"] != _boot_id():
        return False
    pid = info["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):  # exited, not yet reaped by its parent
            return False
        if isinstance(info.get("proc_start"), int) and info["proc_start"] != start:
            return False  # the pid now belongs to another process
    return True


def _read_info(path: Path) -> dict | None:
    """The lock's content, or None when it is missing or garbage (no int pid and hostname)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("hostname"), str):
        return None
    pid = data.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    return data


@contextlib.contextmanager
def _dir_guard(out_dir: Path):
    """Serialise take-overs between processes with an flock on the folder itself."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no guard, take-over races are then possible
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class RunLock:
    """Context manager holding `<out>/.uellm.lock` for the duration of a run.

    took_over_stale is True when the lock was left by a dead process (or was unreadable) and
    this run took it over; previous_holder then holds what that lock said, if readable.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.took_over_stale = False
        self.previous_holder: dict | None = None
        self._token: str | None = None

    def _info(self) -> dict:
        stat = _proc_stat(os.getpid())
        return {"pid": os.getpid(), "hostname": socket.gethostname(), "started_at": now_iso(),
                "boot_id": _boot_id(), "proc_start": stat[1] if stat else None,
                "token": self._token}

    def _create(self) -> bool:
        """Create the lock with its content in one step; False when it already exists."""
        tmp = self.out_dir / f"{LOCK_NAME}.{os.getpid()}.{self._token}"
        tmp.write_text(json.dumps(self._info()) + "\n")
        try:
            os.link(tmp, self.path)  # atomic, and never a visible empty lock file
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: O_EXCL, then write
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(tmp.read_bytes())
                f.flush()
                os.fsync(f.fileno())
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _refuse(self, info: dict) -> LockedError:
        where = "" if info.get("hostname") == socket.gethostname() else f" on {info.get('hostname')}"
        msg = (f"another uellm run (pid {info.get('pid')}{where}, started "
               f"{info.get('started_at')}) is writing to {self.out_dir}")
        hint = ("wait for it to finish or stop it" if not where else
                f"if that run is gone, delete {self.path}")
        return LockedError(msg, hint=hint)

    def refuse_if_held(self) -> None:
        """LockedError now when a live run holds the lock (a look, taking nothing): lets a
        run refuse before reading and tokenising its job; acquire() still decides for real."""
        info = _read_info(self.path)
        if info is not None and _holder_alive(info):
            raise self._refuse(info)

    def acquire(self) -> RunLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._token = uuid.uuid4().hex
        if self._create():
            return self
        with _dir_guard(self.out_dir):
            # Re-read under the guard: another process may have taken it over meanwhile.
            info = _read_info(self.path)
            if info is not None and _holder_alive(info):
                self._token = None
                raise self._refuse(info)
            if not self.path.exists() and self._create():
                return self
            tmp = self.out_dir / f"{LOCK_NAME}.{os.getpid()}.{self._token}"
            tmp.write_text(json.dumps(self._info()) + "\n")
            os.replace(tmp, self.path)
            self.took_over_stale = True
            self.previous_holder = info
        return self

    def release(self) -> None:
        """Remove the lock if it is still ours (a later take-over's lock is left alone)."""
        if self._token is None:
            return
        info = _read_info(self.path)
        if info is not None and info.get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._token = None

    @property
    def held(self) -> bool:
        return self._token is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
