"""`uellm run`: parse options, call run.pipeline.run_job, show progress and the summary."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from uellm_cli.commands.common import console
from uellm_cli.commands.options import (
    BackendOpt,
    ClusterOpt,
    DtypeOpt,
    EngineOpt,
    FormatOpt,
    JobArg,
    MaxBatchSizeOpt,
    MaxNewTokensOpt,
    ModelOpt,
    OnMissOpt,
    PolicyOpt,
    PredictorOpt,
    RawPromptOpt,
    RayAddressOpt,
    ReplicasOpt,
    SloOpt,
    ThreadsOpt,
)
from uellm_cli.config import DEFAULT_MODEL

RUN_EPILOG = """Exit status: 0 every row ok and on time; 1 the run failed; 2 bad usage or a job
file refused before any work; 3 finished, but some rows were rejected, failed or missed their
deadline; 130 interrupted (results so far are kept: rerun with --resume)."""


class ProgressObserver:
    """Shows a rich progress bar on stderr: rows done, tokens/s, ETA, rows at risk."""

    def __init__(self, quiet: bool = False):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[tok_s]:>7.1f} tok/s"),
            TextColumn("[red]{task.fields[at_risk]} at risk"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=quiet,
        )
        self.task = None
        self.tokens = 0
        self.t_start = None

    def stage(self, message: str) -> None:
        if not self.quiet:
            console.print(f"[dim]{message}…[/dim]")

    def started(self, plan, rows_total: int, rows_skipped: int) -> None:
        todo = sum(len(b.rows) for b in plan.batches)
        if rows_skipped and not self.quiet:
            console.print(f"[dim]resuming: {rows_skipped} rows already done[/dim]")
        self.progress.start()
        self.task = self.progress.add_task("generating", total=max(todo, 1), tok_s=0.0, at_risk=0)
        self.t_start = time.perf_counter()

    def batch_done(self, results, record, at_risk: int) -> None:
        self.tokens += record.output_tokens
        elapsed = max(time.perf_counter() - self.t_start, 1e-9)
        self.progress.update(self.task, advance=len(results), tok_s=self.tokens / elapsed,
                             at_risk=at_risk)

    def interrupted(self, second: bool) -> None:
        if second:
            console.print("[red]stopping now[/red] (rerun with --resume to continue)")
        else:
            console.print("[yellow]interrupt: finishing the current batch, then writing "
                          "results (Ctrl-C again to stop at once)[/yellow]")

    def close(self) -> None:
        self.progress.stop()


def run_command(
    job: JobArg,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default runs/<job name>).")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    fmt: FormatOpt = None,
    output_format: Annotated[str, typer.Option("--output-format", help="parquet, jsonl, or openai (OpenAI batch output JSONL).")] = "parquet",
    max_new_tokens: MaxNewTokensOpt = 256,
    slo: SloOpt = None,
    policy: PolicyOpt = "slo-odbs",
    predictor: PredictorOpt = "auto",
    max_batch_size: MaxBatchSizeOpt = None,
    dtype: DtypeOpt = None,
    cluster: ClusterOpt = None,
    on_miss: OnMissOpt = "run",
    raw_prompt: RawPromptOpt = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the model folder.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a run in --out (a plain rerun resumes too).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over in --out even if it holds another run.")] = False,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Rerun rows that failed at execution.")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed batch.")] = False,
    sample_interval: Annotated[float, typer.Option("--sample-interval", help="Seconds between utilisation samples.")] = 1.0,
    threads: ThreadsOpt = None,
    engine: EngineOpt = "auto",
    backend: BackendOpt = "local",
    ray_address: RayAddressOpt = None,
    replicas: ReplicasOpt = None,
    no_history: Annotated[bool, typer.Option("--no-history", help="Do not record this run in the history database.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a job file: validate, profile, plan, generate, and write results + report."""
    from uellm_cli.config import RunConfig
    from uellm_cli.run.pipeline import run_job

    started = time.perf_counter()
    cfg = RunConfig(
        job=job, out=out, model=model, input_format=fmt,
        output_format=output_format, max_new_tokens=max_new_tokens, slo_s=slo, policy=policy,
        predictor=predictor, max_batch_size=max_batch_size, dtype=dtype, cluster=cluster,
        on_miss=on_miss, raw_prompt=raw_prompt, trust_remote_code=trust_remote_code,
        resume=resume, force=force, retry_errors=retry_errors, fail_fast=fail_fast,
        sample_interval_s=sample_interval, record_history=not no_history, threads=threads,
        engine=engine, backend=backend, ray_address=ray_address, replicas=replicas,
    )
    observer = ProgressObserver(quiet=quiet or json_)
    try:
        outcome = run_job(cfg, observer=observer, clock_origin=started)
    finally:
        observer.close()
    _show(outcome, json_)
    raise typer.Exit(outcome.exit_code)


def _show(outcome, json_: bool) -> None:
    if outcome.state == "interrupted":
        console.print(
            f"[yellow]interrupted[/yellow]: {outcome.rows_ok} rows ok so far, kept in "
            f"{outcome.out_dir}; rerun the same command (or add --resume) to continue"
        )
        return
    if json_:
        report = outcome.out_dir / "report.json"
        typer.echo(report.read_text() if report.exists() else json.dumps({}))
        return
    from uellm_cli.report.render import terminal_summary

    console.print(terminal_summary(outcome.metrics, out_dir=outcome.out_dir))
    console.print(f"results: {outcome.results_path}")


def register(app: typer.Typer) -> None:
    app.command("run", epilog=RUN_EPILOG)(run_command)


