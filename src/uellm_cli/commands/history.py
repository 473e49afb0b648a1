"""`uellm history` (recent runs) and `uellm history show RUN_ID` (one run and its rows)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from uellm_cli.commands.common import console

SHOW_ROWS = 20  # rows listed by `history show` without --json


def _date(iso: str | None) -> str:
    return (iso or "")[:16].replace("T", " ")


def _num(x) -> str:
    return "" if x is None else str(x)


def history_list(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Option("--job", help="Only runs of this job (file stem or path).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many runs, newest first.")] = 20,
    json_: Annotated[bool, typer.Option("--json", help="Print the runs as a JSON list on stdout.")] = False,
) -> None:
    """Recent runs: date, job, rows, SLO attainment, makespan, throughput, run id."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from uellm_cli import store
    from uellm_cli.report.formats import fmt_pct, fmt_rate, fmt_s

    runs = store.list_runs(job=job, limit=limit)
    if json_:
        typer.echo(json.dumps(runs, indent=1, default=str))
        return
    if not runs:
        console.print("no runs recorded yet" + (f" for job {job!r}" if job else ""))
        return
    table = Table(box=None, header_style="bold")
    for col, justify in (("date", "left"), ("job", "left"), ("rows", "right"), ("SLO att.", "right"),
                         ("makespan", "right"), ("throughput", "right"), ("state", "left"), ("run id", "left")):
        table.add_column(col, justify=justify)
    for r in runs:
        rows = f"{r['ok']}/{r['rows']}" if r["rows"] is not None else ""
        table.add_row(_date(r["started_at"]), r["job_name"] or "", rows, fmt_pct(r["slo_attainment"]),
                      fmt_s(r["makespan_s"]), fmt_rate(r["throughput_tok_s"]), r["state"] or "", r["run_id"])
    console.print(table)


def history_show(
    run_id: Annotated[str, typer.Argument(help="A run id (a unique prefix is enough).")],
    json_: Annotated[bool, typer.Option("--json", help="Print the run and all its rows as JSON on stdout.")] = False,
) -> None:
    """One run: its summary and its rows."""
    from rich.table import Table

    from uellm_cli import store
    from uellm_cli.report.formats import fmt_s
    from uellm_cli.report.metrics import RunMetrics
    from uellm_cli.report.render import terminal_summary

    run = store.get_run(run_id)
    if json_:
        typer.echo(json.dumps(run, indent=1, default=str))
        return
    console.print(f"[bold]{run['run_id']}[/bold]  {run['job_path'] or ''}  {run['model'] or ''}  "
                  f"{_date(run['started_at'])} → {_date(run['finished_at'])}  ({run['state']})", highlight=False)
    if run.get("metrics"):
        console.print(terminal_summary(RunMetrics.from_dict(run["metrics"]), out_dir=None))
    rows = run["rows_detail"]
    table = Table(box=None, header_style="bold")
    for col in ("id", "status", "latency", "deadline", "met", "predicted", "output tokens"):
        table.add_column(col, justify="left" if col in ("id", "status") else "right")
    for r in rows[:SHOW_ROWS]:
        met = {1: "yes", 0: "no"}.get(r["slo_met"], "—")
        table.add_row(r["row_id"], r["status"], fmt_s(r["latency_s"]), fmt_s(r["deadline_s"]), met,
                      _num(r["predicted_output_tokens"]), _num(r["output_tokens"]))
    console.print(table)
    if len(rows) > SHOW_ROWS:
        console.print(f"[dim]… {len(rows) - SHOW_ROWS} more rows (see --json)[/dim]")
    if run.get("out_dir"):
        console.print(f"[dim]run folder: {run['out_dir']}[/dim]", highlight=False)


def register(app: typer.Typer) -> None:
    history = typer.Typer(help="Past runs recorded in the history database.", no_args_is_help=False)
    history.callback(invoke_without_command=True)(history_list)
    history.command("show")(history_show)
    app.add_typer(history, name="history")
