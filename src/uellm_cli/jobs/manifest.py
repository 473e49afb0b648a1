"""manifest.json and resume: what a run folder holds, and whether a new run may continue it.

The fingerprint is a hash of the input file and of every option that changes outputs. A
rerun into the same --out with the same fingerprint continues (nothing is run twice); any
other fingerprint is refused unless --force, which moves the old run aside first.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from uellm_cli.errors import ConfigError, ResumeMismatchError
from uellm_cli.jobs.durable import atomic_write_json, fsync_dir
from uellm_cli.jobs.results import RowResult
from uellm_cli.jobs.writers import ERRORS_NAME, LOG_NAME, RESULT_NAMES, read_log

MANIFEST_NAME = "manifest.json"
STATES = ("running", "interrupted", "failed", "complete")
SCHEMA_VERSION = 1
# What --force moves aside. Only names a run writes: --out may be a folder holding other
# files (even the input), which must stay where they are. Add new output names here.
RUN_FILES = (
    MANIFEST_NAME, LOG_NAME, ERRORS_NAME, *sorted(set(RESULT_NAMES.values())),
    "report.json", "report.html", "batches.log.jsonl", "batches.jsonl", "plan.json", "plots",
)
FORCE_HINT = "use --force to start over in this folder, or choose another --out"


def now_iso() -> str:
    """UTC wall time, ISO-8601 with seconds: what the manifest records."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- fingerprint


def _canon(value: object) -> object:
    """A JSON value that is equal exactly when the option values mean the same thing.

    Dict order never matters; tuples and lists are the same; 1.0 and 1 are the same number
    (so "temperature: 1" in a job file and --temperature 1.0 agree); sets are sorted.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [_canon(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        return int(value) if value.is_integer() else value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return _canon(value.item())
    return str(value)


def canonical_options(options: dict) -> dict:
    """The options as stored in the manifest and compared on resume."""
    return _canon(options)  # type: ignore[return-value]


def fingerprint(file_sha256: str, options: dict) -> str:
    """sha256 of the input file's hash plus the options that change outputs.

    The caller decides which options matter (model id and config hash, dtype, defaults for
    max_new_tokens/slo/sampling, raw_prompt, chat template hash, seed, policy, ...); this only
    makes the hash independent of dict order and of how equal values are spelled.
    """
    doc = {"input_sha256": file_sha256, "options": canonical_options(options)}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def option_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the options that differ (added, removed or changed), sorted."""
    old, new = canonical_options(old), canonical_options(new)
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(option_differences(a, b, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


_MISSING = object()


# ---------------------------------------------------------------- manifest


@dataclass(slots=True)
class Manifest:
    """manifest.json: what was run and how far it got.

    rows_done counts rows that have a result of any status (ok, error or rejected), so
    rows_done == rows_total means nothing is left to run. runs holds one entry per attempt
    ({started_at, finished_at, state, pid}); a resume appends one.
    """

    fingerprint: str
    input: dict = field(default_factory=dict)  # path, sha256, format, rows
    model: dict = field(default_factory=dict)  # id, revision / config hash, ...
    options: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)  # uellm, torch, transformers, ...
    state: str = "running"
    started_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    finished_at: str | None = None
    rows_total: int = 0
    rows_done: int = 0
    rows_error: int = 0
    rows_rejected: int = 0
    runs: list[dict] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    engine: str | None = None  # the engine that runs it (--engine auto chooses; a resume keeps it)
    engine_note: str | None = None  # why auto chose it

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"manifest state must be one of {STATES}, not {self.state!r}")
        self.options = canonical_options(self.options)

    # -- lifecycle

    def start_attempt(self, pid: int | None = None) -> None:
        """Record that a process starts (or resumes) this run."""
        self.state = "running"
        self.finished_at = None
        self.runs.append({"started_at": now_iso(), "finished_at": None, "state": "running",
                          "pid": os.getpid() if pid is None else pid})

    def finish(self, state: str) -> None:
        """Close the current attempt as interrupted, failed or complete."""
        if state not in STATES or state == "running":
            raise ValueError(f"a run finishes as interrupted, failed or complete, not {state!r}")
        finished_at = now_iso()
        if self.runs:  # the attempt first: a Ctrl-C between the two must not leave it running
            self.runs[-1].update(finished_at=finished_at, state=state)
        self.finished_at = finished_at
        self.state = state

    def set_counts(self, results: Mapping[int, RowResult | Mapping]) -> None:
        """rows_done / rows_error / rows_rejected from the rows done so far (index -> a
        RowResult, or its record as the log holds it)."""
        statuses = [r.status if isinstance(r, RowResult) else r.get("status") for r in results.values()]
        self.rows_done = sum(s in ("ok", "error", "rejected") for s in statuses)
        self.rows_error = statuses.count("error")
        self.rows_rejected = statuses.count("rejected")

    # -- files

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        """Unknown keys (from a newer uellm) are ignored; missing ones take defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, out_dir: Path) -> Path:
        """Write manifest.json atomically (temp file, fsync, rename, fsync of the folder)."""
        self.updated_at = now_iso()
        return atomic_write_json(Path(out_dir) / MANIFEST_NAME, self.to_dict())

    @classmethod
    def load(cls, out_dir: Path) -> Manifest | None:
        """The manifest of `out_dir`, or None when there is none.

        Raises ResumeMismatchError when the file exists but cannot be read as a manifest.
        """
        path = Path(out_dir) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), str):
                raise ValueError("no fingerprint")
            return cls.from_dict(data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            raise ResumeMismatchError(
                f"{path} is not a uellm manifest ({e})", hint=FORCE_HINT) from None


# ---------------------------------------------------------------- resume


@dataclass(slots=True)
class ResumeState:
    """What an out folder already holds for this run.

    done: index -> last record from the result log (ok, error and rejected rows).
    skip: indices not to run again: ok and rejected rows, and error rows unless retry_errors.
    retry: error rows that will run again (only with retry_errors).
    """

    is_resume: bool
    done: dict[int, dict] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)
    retry: set[int] = field(default_factory=set)
    previous: Manifest | None = None
    moved_to: Path | None = None  # where --force put the old run
    torn_bytes: int = 0  # a torn last log line (cut when the log is opened for append)

    def should_run(self, index: int) -> bool:
        return index not in self.skip


def _move_aside(out_dir: Path) -> Path | None:
    """Move the files of an earlier run into <out>/.old-<UTC timestamp>/ (never delete)."""
    present = [out_dir / n for n in RUN_FILES if (out_dir / n).exists()]
    present += sorted(p for p in out_dir.glob(".*.tmp-*") if p.is_file())
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = out_dir / f".old-{stamp}"
    n = 1
    while dest.exists():
        dest = out_dir / f".old-{stamp}-{n}"
        n += 1
    dest.mkdir()
    for p in present:
        os.replace(p, dest / p.name)
    fsync_dir(dest)
    fsync_dir(out_dir)
    return dest


def _mismatch_message(out_dir: Path, old: Manifest, file_sha256: str | None,
                      options: dict | None) -> str:
    what = []
    old_sha = old.input.get("sha256")
    if file_sha256 is not None and old_sha and old_sha != file_sha256:
        what.append("the input file changed")
    if options is not None:
        diff = option_differences(old.options, options)
        if diff:
            what.append(f"options changed: {', '.join(diff)}")
    if not what:
        what.append("the input or the options changed")
    return f"{out_dir} holds a different run: {'; '.join(what)}"


def prepare_out_dir(
    out_dir: Path,
    fingerprint: str,
    *,
    resume: bool = False,
    force: bool = False,
    retry_errors: bool = False,
    file_sha256: str | None = None,
    options: dict | None = None,
) -> ResumeState:
    """Decide whether this run starts fresh or continues what `out_dir` holds.

    - no manifest.json: a fresh run. With `resume`, that is an error (ConfigError): --resume
      means "I expect a run here", so a mistyped --out is caught before hours of work.
    - same fingerprint: resume (a plain rerun resumes too; --resume only makes it explicit).
    - other fingerprint: ResumeMismatchError naming what differs (pass file_sha256 and the
      options dict given to fingerprint() to get the option names), unless `force`.
    - force: the earlier run's files go to <out>/.old-<timestamp>/ and the run starts fresh.
    Call it while holding RunLock(out_dir), so no other run writes the files being read.
    """
    if resume and force:
        raise ConfigError("--resume and --force contradict each other; pass one of them")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if force:
        return ResumeState(is_resume=False, moved_to=_move_aside(out_dir))
    old = Manifest.load(out_dir)
    if old is None:
        if (out_dir / LOG_NAME).exists():
            raise ResumeMismatchError(
                f"{out_dir} holds {LOG_NAME} but no {MANIFEST_NAME}, so it cannot be resumed",
                hint=FORCE_HINT)
        if resume:
            raise ConfigError(f"nothing to resume in {out_dir}: it holds no {MANIFEST_NAME}",
                              hint="run without --resume to start a new run there")
        return ResumeState(is_resume=False)
    if old.fingerprint != fingerprint:
        raise ResumeMismatchError(_mismatch_message(out_dir, old, file_sha256, options),
                                  hint=FORCE_HINT)
    log = read_log(out_dir / LOG_NAME)
    state = ResumeState(is_resume=True, done=log.records, previous=old,
                        torn_bytes=log.torn_bytes)
    for idx, rec in log.records.items():
        status = rec.get("status")
        if status in ("ok", "rejected"):
            state.skip.add(idx)
        elif status == "error":
            (state.retry if retry_errors else state.skip).add(idx)
    return state
