"""The --out folder of one run, held while the run goes: its lock, the resume decision (same
input and options: continue; else refuse unless --force), the manifest, and the durable
writing of each batch's results.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from uellm_cli import __version__
from uellm_cli.config import RunConfig
from uellm_cli.engine.rows import PreparedRow
from uellm_cli.errors import ConfigError
from uellm_cli.jobs.lock import RunLock
from uellm_cli.jobs.manifest import Manifest, ResumeState, fingerprint, prepare_out_dir
from uellm_cli.jobs.results import BatchRecord, RowResult, earlier_batches
from uellm_cli.jobs.writers import ResultLog, read_log
from uellm_cli.run.observer import RunObserver
from uellm_cli.run.prepare import PreparedJob


def check_out_folder(out: Path) -> None:
    """Refuse, before any work, an --out that cannot be a run folder: a file, a path under a
    file, a folder (or the nearest existing parent) this user cannot write, or a folder a live
    run holds. Usage errors (exit 2), not crashes half-way through a job."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder", hint="pass a folder path")
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, so no folder can be made under it",
                          hint="pass a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "folder" if existing == out else f"folder {existing} that would hold it"
        raise ConfigError(f"--out {out}: this user cannot write to the {what}",
                          hint="pass a folder you can write to, or fix its permissions")
    if out.is_dir():
        RunLock(out).refuse_if_held()


class RunFolder:
    """Use as a context manager around everything that writes into --out.

    Entering takes the lock (LockedError while another live run holds it), decides between a
    fresh run and a resume, and saves the manifest as "running". Leaving on an exception saves
    it as interrupted (Ctrl-C) or failed, with counts from the log, and releases the lock.
    `done` holds every row with a result so far (resumed ones first), typed.
    """

    def __init__(self, cfg: RunConfig, prepared: PreparedJob, observer: RunObserver):
        self.cfg, self.prepared, self.observer = cfg, prepared, observer
        model = prepared.model
        self.options = cfg.output_options() | {
            "model_revision": model.resolved.revision if model.resolved else None,
            "chat_template": model.chat_template_hash,
        }
        self.fingerprint = fingerprint(prepared.job.file_sha256, self.options)
        self.lock = RunLock(cfg.out)
        self.log = ResultLog(cfg.out)
        self.state: ResumeState | None = None
        self.manifest: Manifest | None = None
        self.done: dict[int, RowResult] = {}
        self.attempt = 0  # this attempt's number (0 = the first), tagged on its log records

    def __enter__(self) -> RunFolder:
        cfg, job = self.cfg, self.prepared.job
        try:
            self.lock.__enter__()
        except OSError as exc:  # check_out_folder passed, then the folder changed under us
            raise ConfigError(f"--out {cfg.out}: {exc.strerror or exc}",
                              hint="pass a folder you can write to") from exc
        try:
            if self.lock.took_over_stale:
                self.observer.stage(f"took over a stale lock in {cfg.out} (its process is gone)")
            self.state = prepare_out_dir(
                cfg.out, self.fingerprint, resume=cfg.resume, force=cfg.force,
                retry_errors=cfg.retry_errors, file_sha256=job.file_sha256, options=self.options)
            self.done = {i: RowResult.from_record(r) for i, r in self.state.done.items()}
            manifest = self._manifest()
            manifest.start_attempt()
            self.attempt = len(manifest.runs) - 1
            manifest.set_counts(self.done)
            self.manifest = manifest  # from here on __exit__ records how the attempt ended,
            manifest.save(cfg.out)  # even for a signal that lands during this save
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.log.close()
            if exc_type is not None and self.manifest is not None:
                if self.manifest.state == "running":
                    interrupted = issubclass(exc_type, KeyboardInterrupt)
                    self.manifest.finish("interrupted" if interrupted else "failed")
                # Save also when the state was already set: the exception (a second Ctrl-C)
                # may have cut short the save that should have written it. Counts come from
                # the log, which may hold a batch the manifest had not counted yet.
                with contextlib.suppress(OSError):
                    self.manifest.set_counts(read_log(self.cfg.out).records)
                    self.manifest.save(self.cfg.out)
        finally:
            self.lock.__exit__(exc_type, exc, tb)

    @property
    def skipped(self) -> int:
        """Rows a resume does not run again."""
        return len(self.state.skip) if self.state else 0

    def resumed_engines(self) -> list[str] | None:
        """With --engine auto, a resumed run keeps the engine it started on (runs from before
        the engine was recorded ran hf); None: choose afresh."""
        previous = self.state.previous if self.state else None
        if self.cfg.engine != "auto" or previous is None:
            return None
        return [previous.engine or "hf"]

    def record_engine(self, engine: str, note: str | None) -> None:
        """Write down which engine runs the job (and why), before it loads."""
        if self.manifest.engine != engine:
            self.manifest.engine, self.manifest.engine_note = engine, note
            self.manifest.save(self.cfg.out)

    def todo(self, rows: Mapping[int, PreparedRow]) -> dict[int, PreparedRow]:
        """The prepared rows this attempt runs (not done, or failed and --retry-errors)."""
        skip = self.state.skip if self.state else set()
        return {i: p for i, p in rows.items() if i not in skip}

    def record(self, results: Iterable[RowResult]) -> None:
        """Write a finished batch durably (fsynced log, then the manifest's counts)."""
        results = list(results)
        self.log.append(results, attempt=self.attempt)
        self.done.update((r.index, r) for r in results)
        self.manifest.set_counts(self.done)
        self.manifest.save(self.cfg.out)

    def earlier_batches(self, todo: Iterable[int], *, end_s: float | None) -> list[BatchRecord]:
        """The batches earlier attempts ran for rows this one keeps, laid end to end up to
        `end_s` (jobs.results.earlier_batches): the report of a resumed run covers the job."""
        rerun = set(todo)
        done = self.state.done if self.state else {}
        return earlier_batches([r for i, r in done.items() if i not in rerun], end_s=end_s)

    def finish(self, state: str, results: Mapping[int, RowResult] | None = None) -> None:
        """Close this attempt as complete or interrupted (counts over `results` when given)."""
        self.manifest.set_counts(self.done if results is None else results)
        self.manifest.finish(state)
        self.manifest.save(self.cfg.out)

    def _manifest(self) -> Manifest:
        cfg, job, model = self.cfg, self.prepared.job, self.prepared.model
        manifest = self.state.previous or Manifest(
            fingerprint=self.fingerprint,
            input={"path": str(cfg.job), "sha256": job.file_sha256, "format": job.fmt,
                   "rows": job.n_input},
            model={"id": model.name, "path": str(model.resolved.path), "source": model.resolved.source,
                   "revision": model.resolved.revision},
            options=self.options, versions=versions(), rows_total=job.n_input,
        )
        manifest.versions = versions()
        return manifest


def versions() -> dict:
    """The versions a run records: ours and the libraries that shape its outputs."""
    out = {"uellm": __version__}
    for pkg in ("torch", "transformers", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
