"""SQLite history of runs and their rows, at paths.home_dir()/history.db.

Migrations are append-only: MIGRATIONS is an ordered list of functions, each applied once and
recorded by name in `_uellm_migrations`; `connect()` runs `migrate()` every time the DB is
opened. Never edit a released migration: add the next one.

Rows keep their prompt text so the `history` length predictor can train on past runs
(docs/report.md says so: the DB holds your prompts).
"""

from __future__ import annotations

import datetime as _dt
import json
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from uellm_cli import paths
from uellm_cli.errors import EXIT_USAGE, UellmError
from uellm_cli.jobs.results import RowResult
from uellm_cli.jobs.schema import Row, messages_text

if TYPE_CHECKING:
    from uellm_cli.report.metrics import RunMetrics


class HistoryError(UellmError):
    """A run id that is unknown or ambiguous (a usage error)."""

    exit_code = EXIT_USAGE
    code = "history"


# ---------------------------------------------------------------------------- migrations


def m001_runs(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            job_path TEXT,
            job_name TEXT,
            job_fingerprint TEXT,
            model TEXT,
            options TEXT,
            versions TEXT,
            rows INTEGER,
            ok INTEGER,
            errors INTEGER,
            rejected INTEGER,
            slo_attainment REAL,
            makespan_s REAL,
            throughput_tok_s REAL,
            latency_mean_s REAL,
            latency_p99_s REAL,
            out_dir TEXT,
            state TEXT
        )"""
    )


def m002_rows(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE rows (
            run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            row_id TEXT NOT NULL,
            status TEXT NOT NULL,
            prompt_text TEXT,
            prompt_tokens INTEGER,
            max_new_tokens INTEGER,
            predicted_output_tokens INTEGER,
            output_tokens INTEGER,
            finish_reason TEXT,
            latency_s REAL,
            deadline_s REAL,
            slo_met INTEGER,
            PRIMARY KEY (run_id, idx)
        )"""
    )


def m003_indexes(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE INDEX runs_job_name ON runs(job_name, started_at)")
    conn.execute("CREATE INDEX runs_model ON runs(model)")


def m004_run_metrics(conn: sqlite3.Connection) -> None:
    """Goodput, padding waste and the full metrics document (report.json's `metrics`)."""
    conn.execute("ALTER TABLE runs ADD COLUMN goodput_tok_s REAL")
    conn.execute("ALTER TABLE runs ADD COLUMN padding_waste REAL")
    conn.execute("ALTER TABLE runs ADD COLUMN model_load_s REAL")
    conn.execute("ALTER TABLE runs ADD COLUMN metrics TEXT")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    m001_runs,
    m002_rows,
    m003_indexes,
    m004_run_metrics,
]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def migrate(conn: sqlite3.Connection, migrations: Sequence[Callable] | None = None) -> list[str]:
    """Apply the migrations not yet recorded, in order; return the names applied now."""
    conn.execute("CREATE TABLE IF NOT EXISTS _uellm_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    done = {r[0] for r in conn.execute("SELECT name FROM _uellm_migrations")}
    applied = []
    for fn in MIGRATIONS if migrations is None else migrations:
        if fn.__name__ in done:
            continue
        conn.execute("BEGIN")  # each migration (DDL included) and its record commit together
        try:
            fn(conn)
            conn.execute("INSERT INTO _uellm_migrations VALUES (?, ?)", (fn.__name__, _now()))
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        applied.append(fn.__name__)
    return applied


def db_path() -> Path:
    return paths.home_dir() / "history.db"


def connect(path: Path | None = None) -> sqlite3.Connection:
    """Open (creating the folder) and migrate the history DB."""
    path = Path(path) if path is not None else db_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
    except sqlite3.DatabaseError as e:
        raise UellmError(f"cannot open history database {path}: {e}",
                         hint="move the file aside to start a new history") from e
    return conn


# ---------------------------------------------------------------------------- writing


def prompt_text(row: Row) -> str:
    """A row's prompt as the history stores it, losslessly: the prompt, or the messages as JSON."""
    if row.prompt is not None:
        return row.prompt
    return json.dumps(row.messages, ensure_ascii=False)


def stored_prompt_text(text: str | None) -> str | None:
    """Stored prompt text as predictors see it (`Row.text`): messages JSON becomes their
    contents, one per line."""
    if text and text.startswith("[") and text.endswith("]"):
        try:
            msgs = json.loads(text)
        except ValueError:
            return text
        if isinstance(msgs, list) and all(isinstance(m, dict) for m in msgs):
            return messages_text(msgs) or text
    return text


def _iso(t: str | _dt.datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if isinstance(t, _dt.datetime) else t


def new_run_id() -> str:
    """Sortable and unique enough for one user: UTC time plus 6 random hex digits."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


@dataclass(slots=True)
class RunRecord:
    """One run as the history keeps it.

    results: every input row's result (ok, error, rejected). rows: the job's valid rows, for
    the prompt text and max_new_tokens that results do not carry; prompts: text by row index
    for rows not in `rows`. A run id that is already recorded is replaced (a resumed run)."""

    metrics: RunMetrics
    results: Sequence[RowResult]
    rows: Sequence[Row] = ()
    prompts: Mapping[int, str] = field(default_factory=dict)
    job_path: str | Path | None = None
    fingerprint: str | None = None
    model: str | None = None
    options: Mapping = field(default_factory=dict)
    versions: Mapping = field(default_factory=dict)
    out_dir: str | Path | None = None
    started_at: str | _dt.datetime | None = None
    finished_at: str | _dt.datetime | None = None
    state: str = "complete"
    run_id: str | None = None


def _run_values(run: RunRecord, run_id: str) -> dict:
    m, lat = run.metrics, run.metrics.latency
    return {
        "run_id": run_id, "started_at": _iso(run.started_at) or _now(),
        "finished_at": _iso(run.finished_at),
        "job_path": str(run.job_path) if run.job_path is not None else None,
        "job_name": Path(run.job_path).stem if run.job_path is not None else None,
        "job_fingerprint": run.fingerprint, "model": run.model,
        "options": json.dumps(dict(run.options), default=str),
        "versions": json.dumps(dict(run.versions), default=str),
        "rows": m.rows, "ok": m.ok, "errors": m.errors, "rejected": m.rejected,
        "slo_attainment": m.slo_attainment, "makespan_s": m.makespan_s,
        "throughput_tok_s": m.throughput_tok_s, "latency_mean_s": lat.mean_s,
        "latency_p99_s": lat.p99_s, "out_dir": str(run.out_dir) if run.out_dir is not None else None,
        "state": run.state, "goodput_tok_s": m.goodput_tok_s, "padding_waste": m.padding_waste,
        "model_load_s": m.model_load_s, "metrics": json.dumps(m.to_dict(), default=str),
    }


def _row_values(run: RunRecord, run_id: str) -> list[tuple]:
    from uellm_cli.report.metrics import row_latency, row_slo_met

    inputs = {r.index: r for r in run.rows}
    out = []
    for r in run.results:
        src = inputs.get(r.index)
        text = run.prompts.get(r.index, prompt_text(src) if src is not None else None)
        met = row_slo_met(r)
        out.append((
            run_id, r.index, r.id or "", r.status or "error", text, r.prompt_tokens,
            src.max_new_tokens if src is not None else None, r.predicted_output_tokens,
            r.output_tokens, r.finish_reason, row_latency(r), r.deadline_s,
            None if met is None else int(met),
        ))
    return out


def record_run(run: RunRecord, *, db: Path | None = None) -> str:
    """Insert one run and its rows (replacing a run of the same id); returns the run id."""
    run_id = run.run_id or new_run_id()
    values, rows = _run_values(run, run_id), _row_values(run, run_id)
    conn = connect(db)
    try:
        with conn:
            conn.execute("DELETE FROM rows WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            cols = ", ".join(values)
            conn.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(values))})",
                         tuple(values.values()))
            conn.executemany(
                "INSERT INTO rows (run_id, idx, row_id, status, prompt_text, prompt_tokens, max_new_tokens,"
                " predicted_output_tokens, output_tokens, finish_reason, latency_s, deadline_s, slo_met)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
    finally:
        conn.close()
    return run_id


# ---------------------------------------------------------------------------- reading


def _run_dict(r: sqlite3.Row) -> dict:
    d = dict(r)
    for k in ("options", "versions", "metrics"):
        if d.get(k):
            d[k] = json.loads(d[k])
    return d


def list_runs(job: str | None = None, limit: int = 20, db: Path | None = None) -> list[dict]:
    """Newest first. `job` matches the job name (file stem) or the full job path."""
    conn = connect(db)
    try:
        sql, args = "SELECT * FROM runs", []
        if job:
            sql += " WHERE job_name = ? OR job_path = ?"
            args += [job, job]
        sql += " ORDER BY started_at DESC, rowid DESC LIMIT ?"
        args.append(max(0, int(limit)))
        return [_run_dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def get_run(run_id: str, db: Path | None = None) -> dict:
    """One run with its rows (in input order); a unique prefix of the id is enough."""
    if not run_id:
        raise HistoryError("give a run id", hint="see `uellm history`")
    conn = connect(db)
    try:
        found = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchall() or (
            conn.execute(
                "SELECT * FROM runs WHERE substr(run_id, 1, ?) = ? LIMIT 2", (len(run_id), run_id)
            ).fetchall()
        )
        if not found:
            raise HistoryError(f"no run {run_id!r} in the history", hint="see `uellm history`")
        if len(found) > 1:
            raise HistoryError(f"run id prefix {run_id!r} is ambiguous; give more characters")
        run = _run_dict(found[0])
        run["rows_detail"] = [
            dict(r) for r in conn.execute("SELECT * FROM rows WHERE run_id = ? ORDER BY idx", (run["run_id"],))
        ]
        return run
    finally:
        conn.close()


def iter_rows(model: str | None = None, db: Path | None = None) -> Iterator[dict]:
    """Ok rows of past runs with prompt text and output length, for length-predictor training.

    Each dict: model, run_id, row_id, prompt_text, prompt_tokens, max_new_tokens,
    output_tokens, finish_reason ("length" means the row was cut at its budget)."""
    conn = connect(db)
    try:
        sql = (
            "SELECT runs.model, rows.run_id, rows.row_id, rows.prompt_text, rows.prompt_tokens,"
            " rows.max_new_tokens, rows.output_tokens, rows.finish_reason FROM rows"
            " JOIN runs USING (run_id) WHERE rows.status = 'ok' AND rows.output_tokens IS NOT NULL"
        )
        args: list = []
        if model is not None:
            sql += " AND runs.model = ?"
            args.append(model)
        sql += " ORDER BY runs.started_at, rows.idx"
        for r in conn.execute(sql, args):
            yield dict(r)
    finally:
        conn.close()


def length_records(model_name: str, db: Path | None = None) -> list[dict]:
    """Finished rows of past runs of `model_name`, as records the length predictors train on."""
    return [
        {
            "id": r.get("row_id"), "prompt": stored_prompt_text(r.get("prompt_text")),
            "prompt_tokens": r.get("prompt_tokens"), "max_new_tokens": r.get("max_new_tokens"),
            "output_tokens": r.get("output_tokens"), "finish_reason": r.get("finish_reason"),
        }
        for r in iter_rows(model=model_name, db=db)
        if r.get("prompt_text")
    ]
