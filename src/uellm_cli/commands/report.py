"""`uellm report RUN_DIR`: recompute the metrics of a run folder, rewrite report.html, show them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from uellm_cli.commands.common import console


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (the --out of `uellm run`).")],
    json_: Annotated[bool, typer.Option("--json", help="Print the report (report.json's shape) on stdout.")] = False,
) -> None:
    """Re-render the terminal summary and report.html of a finished run."""
    from uellm_cli.report.render import report_document, terminal_summary
    from uellm_cli.report.rundir import rerender

    metrics, data, html_path = rerender(run_dir)
    if json_:
        doc = report_document(metrics, plan_dict=data.plan, options=data.options, versions=data.versions,
                              batches=data.batches, utilisation=data.utilisation, title=data.title)
        typer.echo(json.dumps(doc, indent=1))
        return
    console.print(terminal_summary(metrics, out_dir=html_path.parent))


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
