"""`uellm profile lengths`: train the `history` length predictor and compare predictors.

    uellm profile lengths --train results.parquet --job jobs.jsonl --model M
    uellm profile lengths --from-history --model M
    uellm profile lengths --eval FILE [--job JOB] [--split test] [--model M] [--json]

Light at import: numpy and the predictors load inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from uellm_cli.commands.common import console
from uellm_cli.config import DEFAULT_MODEL
from uellm_cli.errors import ConfigError


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _eval_table(result: dict, title: str):
    from rich.table import Table

    table = Table(title=title, box=None, header_style="bold")
    for col in ("predictor", "rows", "MAE (tokens)", "bucket acc.", "Kendall τ-b",
                "actual ≤ upper", "mean pred. (tokens)", "mean upper (tokens)"):
        table.add_column(col, justify="left" if col == "predictor" else "right")
    for name, m in result.items():
        table.add_row(name, str(m["n"]), _fmt(m["mae"]), _fmt(m["bucket_accuracy"], pct=True),
                      _fmt(m["kendall_tau"]), _fmt(m["upper_coverage"], pct=True),
                      _fmt(m["mean_tokens"]), _fmt(m["mean_upper"]))
    return table


def lengths(
    train: Annotated[Path | None, typer.Option(
        "--train", help="Results (Parquet/JSONL/CSV) of finished runs to train `history` on.")] = None,
    from_history: Annotated[bool, typer.Option(
        "--from-history", help="Train `history` on the rows of --model in the history DB.")] = False,
    job: Annotated[Path | None, typer.Option(
        "--job", help="The job file of those runs: supplies the prompt text, joined on id.")] = None,
    eval_file: Annotated[Path | None, typer.Option(
        "--eval", help="Rows with prompt + output_tokens: compare every predictor on them.")] = None,
    split: Annotated[str | None, typer.Option(
        "--split", help="Keep only rows whose `split` column equals this (e.g. test).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help=f"Served model the lengths belong to (default for --eval: {DEFAULT_MODEL}).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
) -> None:
    """Train the `history` output-length predictor of a model, or compare the predictors
    (MAE, power-of-two bucket accuracy, Kendall tau) on rows with known output lengths."""
    from uellm_cli import store
    from uellm_cli.profile import length_io
    from uellm_cli.profile import lengths as L

    if train is not None and from_history:
        raise ConfigError("--train and --from-history exclude each other")
    if (train is not None or from_history) and not model:
        raise ConfigError("training needs --model: the predictor is stored per served model")
    doc: dict = {}
    if train is not None or from_history:
        records = (length_io.read_length_records(train, job) if train is not None
                   else store.length_records(model))
        pred, _ = L.train_from_records(records, model_name=model, save=False)
        pred.source = str(train) if train is not None else "history database"
        path = L.save_predictor(pred)
        doc["trained"] = {"model": model, "path": str(path), "rows": pred.n_train,
                          "censored": pred.n_censored, "l2": pred.l2, "cv_mae": pred.cv_mae}
        console.print(f"trained `history` for [bold]{model}[/bold] on {pred.n_train} rows "
                      f"({pred.n_censored} cut at max_new_tokens), cross-validated MAE "
                      f"{_fmt(pred.cv_mae)} tokens → {path}", highlight=False)
        if eval_file is not None and Path(eval_file).resolve() == Path(train).resolve():
            console.print("[yellow]warning:[/yellow] evaluating on the training rows flatters `history`")
    if eval_file is not None:
        model_name = model or DEFAULT_MODEL
        preds = {"cap": L.CapPredictor(), "prompt": L.PromptPredictor()}
        if L.predictor_path(model_name).exists():
            preds["history"] = L.load_predictor_file(L.predictor_path(model_name))
        preds["fitted"] = L.load_fitted()
        records = length_io.read_length_records(eval_file, job, split=split)
        result = L.evaluate(preds, records)
        doc["eval"] = {"file": str(eval_file), "model": model_name, "split": split,
                       "predictors": result}
        console.print(_eval_table(result, f"output-length predictors on {eval_file}"
                                  + (f" ({split})" if split else "")))
    if not doc:
        model_name = model or DEFAULT_MODEL
        own = L.predictor_path(model_name)
        doc["predictors"] = sorted(L.PREDICTORS)
        doc["history"] = str(own) if own.exists() else None
        console.print(f"length predictors: {', '.join(sorted(L.PREDICTORS))}; `history` for "
                      f"{model_name}: " + (str(own) if own.exists() else
                                           "shipped fit" if L.is_default_model(model_name)
                                           else "none (train with --train)"), highlight=False)
    if json_:
        typer.echo(json.dumps(doc, indent=1))


def register_lengths(profile_app: typer.Typer) -> None:
    """Add `lengths` to the `profile` sub-app."""
    profile_app.command("lengths")(lengths)
