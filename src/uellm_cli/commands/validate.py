"""`uellm validate JOB`: check a job file by the rules `uellm run` applies, with the model's
tokenizer (prompts that do not fit its context are found here too), loading no weights."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from uellm_cli.commands.common import console
from uellm_cli.commands.options import MaxNewTokensOpt, ModelOpt, RawPromptOpt, SloOpt
from uellm_cli.config import DEFAULT_MODEL
from uellm_cli.errors import EXIT_PARTIAL

SHOWN_ERRORS = 20
VALIDATE_EPILOG = """Exit status: 0 every row is valid; 2 the file is refused as a whole (missing,
empty, not the format it claims) or the model is not found; 3 some rows were rejected (each is
listed with its line)."""


def validate(
    job: Annotated[Path, typer.Argument(help="Job file: .jsonl, .parquet, .csv or an OpenAI batch .jsonl.")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", "-f", help="jsonl, parquet, csv or openai (default: from the file)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    no_model: Annotated[bool, typer.Option(
        "--no-model", help="Check the file's rules only, without the model's tokenizer.")] = False,
    raw_prompt: RawPromptOpt = False,
    max_new_tokens: MaxNewTokensOpt = 256,
    slo: SloOpt = None,
) -> None:
    """Check every row of a job file as `uellm run` would and list the rows it would reject."""
    from uellm_cli.config import RunConfig
    from uellm_cli.run import prepare

    cfg = RunConfig(job=job, model=model, input_format=fmt, raw_prompt=raw_prompt,
                    max_new_tokens=max_new_tokens, slo_s=slo)
    result = prepare.read(cfg)  # InputError: refused as a whole, main() maps it to exit 2
    errors, capped, checked_with = list(result.errors), 0, None
    if not no_model:  # the tokenizer and config only (a GGUF is converted once, as for run)
        inputs = prepare.model_for_run(cfg)
        prepared = prepare.prepare(result, inputs)
        errors = sorted([*errors, *prepared.rejected], key=lambda e: (e.index is None, e.index or 0))
        capped, checked_with = prepared.capped, inputs.name
    if as_json:
        doc = {
            "file": str(job),
            "format": result.fmt,
            "model": checked_with,
            "rows": result.n_input,
            "valid": result.n_input - len(errors),
            "rejected": len(errors),
            "capped": capped,
            "errors": [e.to_dict() for e in errors],
        }
        typer.echo(json.dumps(doc, ensure_ascii=False))
    _summary(result, errors, capped, checked_with)
    if errors:
        raise typer.Exit(EXIT_PARTIAL)


def _summary(job, errors: list, capped: int, model: str | None) -> None:
    """Counts, then the first errors as one-liners; user text is printed without rich markup."""
    rejected = len(errors)
    style = "red" if rejected else "green"
    against = f" (checked with the tokenizer of {escape(model)})" if model else " (file rules only)"
    console.print(
        f"{escape(str(job.path))}: {job.fmt}, {job.n_input} rows: "
        f"[green]{job.n_input - rejected} valid[/green], [{style}]{rejected} rejected[/{style}]{against}",
        highlight=False,
    )
    if capped:
        console.print(f"  {capped} row(s) ask for more new tokens than the context leaves: capped, "
                      "with a warning", markup=False, highlight=False)
    if not rejected:
        return
    by_code = Counter(e.code for e in errors)
    console.print("  " + ", ".join(f"{code}: {n}" for code, n in by_code.most_common()),
                  markup=False, highlight=False)
    for error in errors[:SHOWN_ERRORS]:
        console.print("  " + error.one_line(), markup=False, highlight=False, soft_wrap=True)
    if rejected > SHOWN_ERRORS:
        console.print(f"  ... and {rejected - SHOWN_ERRORS} more (--json lists them all)",
                      markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add `validate` to the given app."""
    app.command("validate", epilog=VALIDATE_EPILOG)(validate)
