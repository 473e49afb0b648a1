"""`uellm profile`: hardware, model and (optionally) calibration, written to the profile JSON
that `run` and `plan` pick up. A Typer sub-app so `uellm profile lengths ...` can sit beside it:
a module listed in SUBCOMMANDS (uellm_cli/commands/lengths.py) defines

    def register_lengths(profile_app: typer.Typer) -> None:
        profile_app.command("lengths")(lengths)

and `register(app)` below calls it before adding the group.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from uellm_cli.commands.common import console, optional_command_module
from uellm_cli.config import DEFAULT_MODEL, ENGINE_NAMES

profile_app = typer.Typer(
    help="Profile the hardware and the model (and calibrate the cost model).",
    no_args_is_help=False,
    add_completion=False,
)

JOB_SAMPLE = 5


@profile_app.callback(invoke_without_command=True)
def profile(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", "-m", help=f"Model folder, .gguf file or alias (default: {DEFAULT_MODEL}).")] = None,
    cluster: Annotated[str | None, typer.Option("--cluster", "-c", help="Cluster spec (4xA100-40GB, 2xH100-80GB:nvlink, 1xA100-80GB+2xL4, cpu) or a cluster file; default: detect this machine.")] = None,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Time prefill and decode of the model on this machine and fit the cost model.")] = False,
    device: Annotated[str | None, typer.Option("--device", help="Device to calibrate on (cpu, cuda:0); default: cuda:0 if NVML sees a GPU, else cpu.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="Plan with this dtype (float16, bfloat16, float32); default: float32 on a CPU-only cluster, else the checkpoint's.")] = None,
    engine: Annotated[str, typer.Option("--engine", help="Engine the calibration is for: hf or vllm (needs the vllm extra).")] = "hf",
    job: Annotated[str | None, typer.Option("--job", help="A job file: show predicted output lengths for a sample of its rows.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as one JSON document on stdout.")] = False,
) -> None:
    """Show devices, links, the model's memory and FLOPs, and write the profile JSON."""
    if ctx.invoked_subcommand is not None:
        return
    from uellm_cli.profile.calibrate import load_calibrations
    from uellm_cli.profile.document import build_profile_doc, save_profile_doc
    from uellm_cli.profile.hardware import resolve_cluster
    from uellm_cli.profile.model import load_model_profile
    from uellm_cli.profile.model_profile import planning_dtype
    from uellm_cli.report.profile_view import render_profile

    spec = model or DEFAULT_MODEL
    found = resolve_cluster(cluster)
    prof = load_model_profile(spec, planning_dtype(found, dtype))
    if engine not in ENGINE_NAMES:
        from uellm_cli.errors import ConfigError

        raise ConfigError(f"--engine {engine!r}: calibrate one of {', '.join(ENGINE_NAMES)}")
    if calibrate:
        _calibrate(spec, prof, found, device, engine)
    names = {d.name for d in found.devices}
    cals = {k: c for k, c in load_calibrations(engine, model=prof.name).items() if k in names}
    job_doc = _job_sample(job, prof.name) if job else None
    doc = build_profile_doc(found, prof, cals, job_doc)
    path = save_profile_doc(doc)
    if as_json:
        typer.echo(json.dumps(doc))
    render_profile(doc, console)
    console.print(f"[dim]profile written to {escape(str(path))}[/dim]", highlight=False)


def _calibrate(spec: str, prof, cluster, device: str | None, engine: str = "hf") -> None:
    from uellm_cli.engine.calibrate import calibrate
    from uellm_cli.engine.models import resolve_model
    from uellm_cli.profile.calibrate import save_calibration
    from uellm_cli.profile.threads import choose_cpu_threads

    device = device or ("cuda:0" if cluster.source == "nvml" and cluster.has_gpu else "cpu")
    resolved = resolve_model(spec)
    with console.status(f"calibrating {escape(prof.name)} on {device}...") as status:
        def progress(done: int, total: int) -> None:
            status.update(f"calibrating {escape(prof.name)} on {device}: {done}/{total} points")

        cal = calibrate(str(resolved.path), device=device, name=prof.name, engine=engine,
                        threads=choose_cpu_threads() if device == "cpu" else None,
                        dtype=prof.dtype if device == "cpu" else None, progress=progress)
    path = save_calibration(cal)
    console.print(f"[dim]calibration saved to {escape(str(path))}[/dim]", highlight=False)


def _job_sample(job: str, model_name: str) -> dict:
    """Predicted output lengths for the first rows of a job (prompt tokens estimated as chars/4:
    the profile loads no tokenizer)."""
    from uellm_cli.errors import ConfigError
    from uellm_cli.jobs.readers import read_job
    from uellm_cli.profile import lengths
    from uellm_cli.run.prepare import CHARS_PER_TOKEN

    read = read_job(job)
    # What a run would predict (`auto`: its own history or the shipped fit, the model's answers
    # to stated lengths), else the prompt rules.
    try:
        predictor = lengths.get_predictor("auto", model_name=model_name)
    except (ConfigError, OSError, ValueError):
        predictor = lengths.PromptPredictor()
    rows = read.rows[:JOB_SAMPLE]
    queries = [lengths.LengthQuery(r.text, max(1, len(r.text) // CHARS_PER_TOKEN), r.max_new_tokens)
               for r in rows]
    preds = predictor.predict(queries)
    return {
        "file": str(job), "rows": len(read.rows), "rejected": len(read.errors), "predictor": predictor.name,
        "sample": [{"id": r.id, "prompt_tokens_est": q.prompt_tokens, "max_new_tokens": r.max_new_tokens,
                    "predicted_tokens": p.tokens, "predicted_upper": p.upper}
                   for r, q, p in zip(rows, queries, preds, strict=True)],
    }


# Modules that add sub-commands to `uellm profile`: (module, function taking profile_app).
SUBCOMMANDS = (("lengths", "register_lengths"),)
_subcommands_added = False


def _add_subcommands() -> None:
    global _subcommands_added
    if _subcommands_added:
        return
    _subcommands_added = True
    for name, func in SUBCOMMANDS:
        module = optional_command_module(name)
        if module is not None:
            getattr(module, func)(profile_app)


def register(app: typer.Typer) -> None:
    """Add the `profile` group (the command itself, and its sub-commands such as `lengths`)."""
    _add_subcommands()
    app.add_typer(profile_app, name="profile")
