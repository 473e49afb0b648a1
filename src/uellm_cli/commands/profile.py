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
from rich.table import Table

from uellm_cli.commands.common import console, optional_command_module

profile_app = typer.Typer(
    help="Profile the hardware and the model (and calibrate the cost model).",
    no_args_is_help=False,
    add_completion=False,
)

JOB_SAMPLE = 5


@profile_app.callback(invoke_without_command=True)
def profile(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model folder, .gguf file or alias (default: smollm2-135m).")] = None,
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
    from uellm_cli.profile.aliases import DEFAULT_ALIAS
    from uellm_cli.profile.calibrate import load_calibrations
    from uellm_cli.profile.document import build_profile_doc, save_profile_doc
    from uellm_cli.profile.hardware import resolve_cluster
    from uellm_cli.profile.model import load_model_profile, planning_dtype

    spec = model or DEFAULT_ALIAS
    found = resolve_cluster(cluster)
    prof = load_model_profile(spec, planning_dtype(found, dtype))
    if engine not in ("hf", "vllm"):
        from uellm_cli.errors import ConfigError

        raise ConfigError(f"--engine {engine!r}: choose hf or vllm")
    if calibrate:
        _calibrate(spec, prof, found, device, engine)
    names = {d.name for d in found.devices}
    cals = {k: c for k, c in load_calibrations(engine, model=prof.name).items() if k in names}
    job_doc = _job_sample(job, prof.name) if job else None
    doc = build_profile_doc(found, prof, cals, job_doc)
    path = save_profile_doc(doc)
    if as_json:
        typer.echo(json.dumps(doc))
    _render(doc)
    console.print(f"[dim]profile written to {escape(str(path))}[/dim]", highlight=False)


def _calibrate(spec: str, prof, cluster, device: str | None, engine: str = "hf") -> None:
    from uellm_cli.engine.models import resolve_model
    from uellm_cli.profile.calibrate import calibrate, save_calibration

    device = device or ("cuda:0" if cluster.source == "nvml" and cluster.has_gpu else "cpu")
    resolved = resolve_model(spec)
    with console.status(f"calibrating {escape(prof.name)} on {device}...") as status:
        def progress(done: int, total: int) -> None:
            status.update(f"calibrating {escape(prof.name)} on {device}: {done}/{total} points")

        cal = calibrate(str(resolved.path), device=device, name=prof.name, engine=engine,
                        dtype=prof.dtype if device == "cpu" else None, progress=progress)
    path = save_calibration(cal)
    console.print(f"[dim]calibration saved to {escape(str(path))}[/dim]", highlight=False)


def _job_sample(job: str, model_name: str) -> dict:
    """Predicted output lengths for the first rows of a job (prompt tokens estimated as chars/4:
    the profile loads no tokenizer)."""
    from uellm_cli.errors import ConfigError
    from uellm_cli.jobs.readers import read_job
    from uellm_cli.profile import lengths

    read = read_job(job)
    predictor = lengths.CapPredictor()
    # The best predictor available for this model: its own history, the shipped fit, the prompt rules.
    for name in ["history", *(["fitted"] if lengths.is_default_model(model_name) else []), "prompt"]:
        try:
            predictor = lengths.get_predictor(name, model_name=model_name)
            break
        except (ConfigError, OSError, ValueError):
            continue
    rows = read.rows[:JOB_SAMPLE]
    texts = [r.prompt if r.prompt is not None else "\n".join(str(m.get("content", "")) for m in r.messages or []) for r in rows]
    queries = [lengths.LengthQuery(t, max(1, len(t) // 4), r.max_new_tokens) for t, r in zip(texts, rows, strict=True)]
    preds = predictor.predict(queries)
    return {
        "file": str(job), "rows": len(read.rows), "rejected": len(read.errors), "predictor": predictor.name,
        "sample": [{"id": r.id, "prompt_tokens_est": q.prompt_tokens, "max_new_tokens": r.max_new_tokens,
                    "predicted_tokens": p.tokens, "predicted_upper": p.upper}
                   for r, q, p in zip(rows, queries, preds, strict=True)],
    }


# ---------------------------------------------------------------------------- rendering


def _bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _rate(n: float, unit: str) -> str:
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {prefix}{unit}"
    return f"{n:.0f} {unit}"


def _render(doc: dict) -> None:
    cl, m = doc["cluster"], doc["model"]
    for note in cl.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    t = Table(title=f"devices ({cl['source']})", title_justify="left")
    for col in ("id", "name", "memory", "compute", "memory bandwidth", "numbers from"):
        t.add_column(col)
    for d in cl["devices"]:
        t.add_row(d["id"], escape(d["name"]), _bytes(d["memory_bytes"]), _rate(d["flops"], "FLOP/s"),
                  _rate(d["mem_bandwidth"], "B/s"), d.get("numbers_from", ""))
    console.print(t)
    if cl["links"]:
        lt = Table(title="links (per direction)", title_justify="left")
        for col in ("between", "kind", "bandwidth", "latency", "detail"):
            lt.add_column(col)
        groups: dict[tuple, list[str]] = {}
        for link in cl["links"]:
            key = (link["kind"], link["bandwidth"], link["latency"], link.get("detail", ""))
            groups.setdefault(key, []).append(f"{link['a']}-{link['b']}")
        for (kind, bandwidth, latency, detail), pairs in groups.items():
            shown = ", ".join(pairs[:3]) + (f" +{len(pairs) - 3} more" if len(pairs) > 3 else "")
            lt.add_row(shown, kind, _rate(bandwidth, "B/s"), f"{latency * 1e6:.0f} us", escape(detail))
        console.print(lt)
    console.print(
        f"[bold]model[/bold] {escape(m['name'])} ({m['architecture']}, {m['dtype']}): {m['num_layers']} layers, "
        f"{m['extra'].get('num_params', 0) / 1e9:.3g} B params, weights {_bytes(m['weight_bytes'])} "
        f"(embeddings {_bytes(m['embed_bytes'])}, layer {_bytes(m['layer_bytes'])}, head {_bytes(m['head_bytes'])})",
        highlight=False)
    console.print(
        f"  KV cache {m['kv_bytes_per_token']:,} B/token ({m['num_kv_heads']} KV heads x {m['head_dim']}), "
        f"{m['flops_per_token'] / 1e9:.3g} GFLOP/token + {m['attn_flops_per_token_per_ctx']:,.0f} FLOP per context token, "
        f"max context {m['max_context']:,}", highlight=False)
    mt = Table(title="model memory per device (whole model on one device)", title_justify="left")
    for col in ("device", "memory", "weights", "fits", "KV tokens in the rest", "layers that fit"):
        mt.add_column(col)
    for r in doc["memory"]:
        mt.add_row(r["device"], _bytes(r["memory_bytes"]), _bytes(r["weight_bytes"]), "yes" if r["fits"] else "no",
                   f"{r['kv_tokens']:,}", f"{r['layers_fit']}/{m['num_layers']}")
    console.print(mt)
    _render_calibrations(doc["calibrations"])
    if "job" in doc:
        _render_job(doc["job"])


def _render_calibrations(cals: dict) -> None:
    if not cals:
        console.print("[dim]no calibration for this model here: the cost model uses the roofline "
                      "(run `uellm profile --calibrate`)[/dim]", highlight=False)
        return
    engine = next(iter(cals.values())).get("engine", "hf")
    ct = Table(title=f"calibration ({engine} engine)", title_justify="left")
    for col in ("device", "prefill 1x512", "decode step b=1 ctx=512", "decode step b=16 ctx=512", "fit MAPE (prefill/decode)", "measured"):
        ct.add_column(col)
    for name, c in cals.items():
        p0, p1, p2 = c["prefill"]
        d0, d1, d2 = c["decode"]
        err = c.get("fit_error", {})
        ct.add_row(escape(name), f"{(p0 + p1 * 512 + p2 * 512 * 512) * 1e3:.1f} ms",
                   f"{(d0 + d1 + d2 * 512) * 1e3:.1f} ms", f"{(d0 + 16 * d1 + 16 * d2 * 512) * 1e3:.1f} ms",
                   f"{err.get('prefill_mape', float('nan')):.1%} / {err.get('decode_mape', float('nan')):.1%}",
                   c.get("measured_at", ""))
    console.print(ct)


def _render_job(job: dict) -> None:
    jt = Table(title=f"job {escape(job['file'])}: {job['rows']} rows, predictor {job['predictor']}", title_justify="left")
    for col in ("id", "prompt tokens (est.)", "max_new_tokens", "predicted", "upper"):
        jt.add_column(col)
    for s in job["sample"]:
        jt.add_row(escape(str(s["id"])), str(s["prompt_tokens_est"]), str(s["max_new_tokens"]),
                   str(s["predicted_tokens"]), str(s["predicted_upper"]))
    console.print(jt)


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
