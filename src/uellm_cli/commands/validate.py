"""`uellm validate JOB`: read and check a job file without loading any model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from uellm_cli.commands.common import console
from uellm_cli.errors import EXIT_PARTIAL

SHOWN_ERRORS = 20
VALIDATE_EPILOG = """Exit status: 0 every row is valid; 2 the file is refused as a whole (missing,
empty, not the format it claims); 3 some rows were rejected (each is listed with its line)."""


def validate(
    job: Annotated[Path, typer.Argument(help="Job file: .jsonl, .parquet, .csv or an OpenAI batch .jsonl.")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", "-f", help="jsonl, parquet, csv or openai (default: from the file)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")] = False,
) -> None:
    """Check every row of a job file and list the rows that would be rejected."""
    from uellm_cli.jobs.readers import read_job

    result = read_job(job, fmt=fmt)  # InputError: refused as a whole, main() maps it to exit 2
    rejected = len(result.errors)
    if as_json:
        doc = {
            "file": str(job),
            "format": result.fmt,
            "rows": result.n_input,
            "valid": len(result.rows),
            "rejected": rejected,
            "errors": [e.to_dict() for e in result.errors],
        }
        typer.echo(json.dumps(doc, ensure_ascii=False))
    _summary(result)
    if rejected:
        raise typer.Exit(EXIT_PARTIAL)


def _summary(job) -> None:
    """Counts, then the first errors as one-liners; user text is printed without rich markup."""
    rejected = len(job.errors)
    style = "red" if rejected else "green"
    console.print(
        f"{escape(str(job.path))}: {job.fmt}, {job.n_input} rows: "
        f"[green]{len(job.rows)} valid[/green], [{style}]{rejected} rejected[/{style}]",
        highlight=False,
    )
    if not rejected:
        return
    by_code = Counter(e.code for e in job.errors)
    console.print("  " + ", ".join(f"{code}: {n}" for code, n in by_code.most_common()),
                  markup=False, highlight=False)
    for error in job.errors[:SHOWN_ERRORS]:
        console.print("  " + error.one_line(), markup=False, highlight=False, soft_wrap=True)
    if rejected > SHOWN_ERRORS:
        console.print(f"  ... and {rejected - SHOWN_ERRORS} more (--json lists them all)",
                      markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add `validate` to the given app."""
    app.command("validate", epilog=VALIDATE_EPILOG)(validate)
