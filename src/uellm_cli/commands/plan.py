"""`uellm plan JOB`: the deployment, batch timeline and forecast, without loading any weights.

Works for hardware the user does not have (`--cluster 8xH100-80GB`). Heavy imports (torch for
accelerate's baselines, transformers for a local tokenizer) happen inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from uellm_cli.commands.common import console

CHARS_PER_TOKEN = 4  # prompt-token estimate when the model has no local tokenizer


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)


def plan_command(
    job: Annotated[Path, typer.Argument(help="Job file: JSONL, Parquet, CSV or OpenAI batch JSONL.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model folder, .gguf file or alias (llama-7b, ...). Default: the default model.")] = None,
    cluster: Annotated[str | None, typer.Option("--cluster", help="Cluster spec (4xA100-40GB, 1xA100-80GB+2xL4, cpu) or file; default: this machine.")] = None,
    policy: Annotated[str, typer.Option("--policy", help="slo-odbs, fcfs, sjf, edf, slo-odbs-paper.")] = "slo-odbs",
    objective: Annotated[str, typer.Option("--objective", help="helr (best SLO attainment per device), lr (least latency), he (fewest devices).")] = "helr",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Default generation budget for rows without one.")] = 256,
    slo: Annotated[float | None, typer.Option("--slo", help="Default deadline in seconds after the start, for rows without one.")] = None,
    max_batch_size: Annotated[int | None, typer.Option("--max-batch-size", help="Upper bound on rows per batch.")] = None,
    on_miss: Annotated[str, typer.Option("--on-miss", help="run (best effort) or skip rows forecast to miss their deadline.")] = "run",
    predictor: Annotated[str, typer.Option("--predictor", help="Output-length predictor: cap, prompt, history.")] = "cap",
    dtype: Annotated[str | None, typer.Option("--dtype", help="Weights dtype to plan for (default: the checkpoint's; float32 on CPU).")] = None,
    input_format: Annotated[str | None, typer.Option("--format", help="Force the input format: jsonl, parquet, csv, openai.")] = None,
    baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also judge accelerate's auto/balanced/sequential maps (imports torch).")] = True,
    engine: Annotated[str, typer.Option("--engine", help="Forecast for this engine's calibration: hf or vllm.")] = "hf",
    backend: Annotated[str, typer.Option("--backend", help="local (this machine or --cluster) or ray (the cluster a Ray cluster reports).")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to read: auto, or HOST:PORT.")] = None,
    replicas: Annotated[int | None, typer.Option("--replicas", help="Plan exactly this many model replicas.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON on stdout.")] = False,
) -> None:
    """Plan a job: deployment (HELR vs accelerate), batches (SLO-ODBS or a baseline), forecast."""
    from uellm_cli.config import RunConfig
    from uellm_cli.jobs.readers import read_job
    from uellm_cli.plan.planner import make_plan, plan_to_dict
    from uellm_cli.profile.calibrate import load_calibrations
    from uellm_cli.profile.hardware import resolve_cluster
    from uellm_cli.profile.model import load_model_profile, planning_dtype

    source = model or _default_model()
    # the run's own checks of engine/backend/cluster/replicas, so plan and run agree
    RunConfig(job=job, out=Path("."), engine=engine, backend=backend, ray_address=ray_address,
              cluster=cluster, replicas=replicas)
    doc = read_job(job, fmt=input_format, default_max_new_tokens=max_new_tokens, default_slo_s=slo)
    ray_cluster = _ray_cluster(ray_address, replicas) if backend == "ray" else None
    the_cluster = ray_cluster.cluster if ray_cluster else resolve_cluster(cluster)
    profile = load_model_profile(source, planning_dtype(the_cluster, dtype))
    queries, capped = build_queries(doc.rows, source, profile, predictor)
    extra, notes = [], list(the_cluster.notes) if backend == "ray" else []
    if baselines and backend == "ray":
        notes.append("accelerate baselines skipped: they place one machine's devices")
    elif baselines:
        extra, note = _accelerate(source, profile, the_cluster)
        notes += [note] if note else []
    from uellm_cli.runner import expected_startup_s

    start = expected_startup_s(profile, engine, backend)  # loading comes first on the run clock
    calibrations = load_calibrations(engine)
    if ray_cluster is not None:
        calibrations = ray_cluster.with_slot_calibrations(calibrations)
    plan = make_plan(queries, profile, the_cluster, policy=policy, objective=objective,
                     calibrations=calibrations, start_offset_s=start,
                     max_batch_size=max_batch_size, extra_deployments=extra, on_miss=on_miss,
                     replicas=replicas)
    if capped:
        plan.notes.append(f"{capped} row(s) had max_new_tokens capped to fit the {profile.max_context}-token context")
    plan.notes.extend(notes)
    if doc.errors:
        plan.notes.append(f"{len(doc.errors)} row(s) of {doc.n_input} rejected by validation (see `uellm validate`)")
    if as_json:
        typer.echo(json.dumps(plan_to_dict(plan), default=str))
        return
    for part in render_plan(plan, profile, the_cluster, {q.index: q for q in queries}):
        console.print(part)


def _ray_cluster(address: str | None, replicas: int | None):
    """The cluster a Ray cluster reports now (connects, reads ray.nodes(), disconnects).
    RayBackend refuses a missing Ray or a dead address in one line."""
    from uellm_cli.profile.hardware import detect_cpu
    from uellm_cli.ray_backend.driver import RayBackend

    with RayBackend(address) as backend:
        return backend.cluster(detect_cpu(), replicas=replicas)


def _default_model() -> str:
    try:
        from uellm_cli.engine.models import DEFAULT_MODEL
    except ImportError:  # pragma: no cover - engine not in this build
        return "smollm2-135m"
    return DEFAULT_MODEL


def build_queries(rows, source: str, profile, predictor_name: str = "cap"):
    """Profile rows into Queries without weights: prompt tokens from the model folder's own
    tokenizer when --model is a local folder (else chars/4), predicted lengths from the predictor.
    Returns (queries, rows whose budget was capped to the context)."""
    from uellm_cli.plan.types import Query
    from uellm_cli.profile.lengths import LengthQuery

    texts = [_row_text(r) for r in rows]
    counts = _token_counts(rows, texts, source)
    capped = 0
    budgets = []
    for r, n in zip(rows, counts, strict=True):
        room = max(1, profile.max_context - n) if profile.max_context else r.max_new_tokens
        capped += r.max_new_tokens > room
        budgets.append(min(r.max_new_tokens, room))
    preds = _predictor(predictor_name, profile.name).predict(
        [LengthQuery(text=t, prompt_tokens=n, max_new_tokens=b) for t, n, b in zip(texts, counts, budgets, strict=True)])
    queries = [
        Query(index=r.index, id=r.id, prompt_tokens=n, max_new_tokens=b,
              predicted_tokens=min(p.tokens, b), predicted_upper=min(max(p.upper, p.tokens), b),
              deadline_s=r.deadline_s, priority=r.priority, group=r.sampling.key())
        for r, n, b, p in zip(rows, counts, budgets, preds, strict=True)
    ]
    return queries, capped


def _predictor(name: str, model_name: str):
    from uellm_cli.profile import lengths

    get = getattr(lengths, "get_predictor", None)
    if get is None:
        if name != "cap":
            from uellm_cli.errors import ConfigError

            raise ConfigError(f"predictor {name!r} is not available in this build; use cap")
        return lengths.CapPredictor()
    return get(name, model_name=model_name)


def _row_text(row) -> str:
    if row.prompt is not None:
        return row.prompt
    return "\n".join(str(m.get("content", "")) for m in row.messages or [])


def _token_counts(rows, texts: list[str], source: str) -> list[int]:
    tok = _local_tokenizer(source)
    if tok is None:
        return [max(1, len(t) // CHARS_PER_TOKEN) for t in texts]
    out = []
    for r, t in zip(rows, texts, strict=True):
        try:
            if r.messages and getattr(tok, "chat_template", None):
                ids = tok.apply_chat_template(r.messages, tokenize=True, add_generation_prompt=True)
                ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            else:
                ids = tok(t)["input_ids"]
            out.append(max(1, len(ids)))
        except Exception:  # noqa: BLE001 - a row the tokenizer chokes on is estimated instead
            out.append(max(1, len(t) // CHARS_PER_TOKEN))
    return out


def _local_tokenizer(source: str):
    path = Path(source).expanduser()
    if not path.is_dir() or not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception:  # noqa: BLE001 - fall back to the character estimate
        return None


def _accelerate(source: str, profile, cluster):
    """accelerate's baselines on a meta model; (deployments, note when they could not be built)."""
    try:
        from uellm_cli.plan.accelerate_baselines import accelerate_deployments
        from uellm_cli.profile.model import build_meta_model

        meta = build_meta_model(source, profile.dtype)
        return accelerate_deployments(meta, profile, cluster), None
    except Exception as exc:  # noqa: BLE001 - baselines are for comparison only
        return [], f"accelerate baselines skipped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


# ---------------------------------------------------------------------------- rendering

MISSED_SHOWN = 15


def render_plan(plan, profile, cluster, queries: dict) -> list:
    """Rich renderables: deployment, alternatives, timeline summary, rows forecast to miss, notes."""
    from rich.table import Table

    out: list = []
    dep = plan.deployment
    summary = plan.summary
    out.append(f"[bold]{profile.name}[/bold] ({profile.dtype}, {profile.num_layers} layers, "
               f"{_gib(profile.weight_bytes)} weights) on {len(cluster.devices)} device(s); "
               f"policy [bold]{plan.policy}[/bold], deployment [bold]{dep.strategy}[/bold] "
               f"with {len(dep.replicas)} replica(s)")

    t = Table(title="Chosen deployment", title_justify="left")
    for col in ("replica", "device", "layers", "also", "weights", "KV reserve", "usable memory"):
        t.add_column(col, justify="right" if col in ("weights", "KV reserve", "usable memory") else "left")
    from uellm_cli.plan.deployer import tied_head_modules, usable_bytes

    for r in dep.replicas:
        for i, s in enumerate(r.stages):
            also = []
            if s.has_embed:
                also.append("embeddings")
            if s.has_head:
                also.append("head")
            if profile.tied_embeddings and i == 0 and len(r.stages) > 1:
                also.append(f"{', '.join(tied_head_modules(profile))} (tied)")
            layers = f"{s.first_layer}-{s.last_layer - 1}" if s.num_layers else "-"
            mem = usable_bytes(cluster.device(s.device).memory_bytes)
            t.add_row(str(r.index), s.device, layers, ", ".join(also), _gib(s.weight_bytes),
                      _gib(s.kv_reserve_bytes), _gib(mem))
    out.append(t)

    t = Table(title="Alternatives (forecast)", title_justify="left")
    for col in ("", "strategy", "replicas", "devices", "makespan", "SLO attainment", "throughput", "judged on"):
        t.add_column(col)
    for a in plan.alternatives:
        t.add_row("*" if a["chosen"] else "", a["strategy"], str(a["replicas"]), str(a["n_devices"]),
                  _secs(a["makespan_s"]), _pct(a["slo_attainment"]), _rate(a["throughput_tok_s"]),
                  f"{a['judged_rows']} rows")
    out.append(t)

    t = Table(title="Batch timeline", title_justify="left")
    for col in ("replica", "batches", "rows", "mean batch", "first start", "last finish"):
        t.add_column(col, justify="right")
    for r in dep.replicas:
        bs = [b for b in plan.batches if b.replica == r.index]
        rows = sum(len(b.rows) for b in bs)
        t.add_row(str(r.index), str(len(bs)), str(rows), f"{rows / len(bs):.1f}" if bs else "-",
                  _secs(min((b.start_s for b in bs), default=None)), _secs(max((b.finish_s for b in bs), default=None)))
    out.append(t)
    out.append(f"forecast: makespan {_secs(summary.get('makespan_s'))}, SLO attainment "
               f"{_pct(summary.get('slo_attainment'))} of {summary.get('rows_with_deadline', 0)} rows with a deadline, "
               f"throughput {_rate(summary.get('throughput_tok_s'))}, padding waste {_pct(summary.get('padding_waste'))}; "
               f"first batch at {plan.start_offset_s:.1f} s (after loading)")

    missed = sorted((f for f in plan.forecast.values() if f.slo_met is False), key=lambda f: f.deadline_s)
    if missed:
        t = Table(title=f"Rows forecast to miss their deadline ({len(missed)})", title_justify="left")
        for col in ("id", "deadline", "forecast finish", "late by", "status"):
            t.add_column(col)
        for f in missed[:MISSED_SHOWN]:
            q = queries.get(f.index)
            t.add_row(q.id if q else str(f.index), _secs(f.deadline_s), _secs(f.finish_s),
                      _secs(f.finish_s - f.deadline_s), "skipped" if f.index in set(plan.skipped) else "runs")
        if len(missed) > MISSED_SHOWN:
            t.add_row(f"... {len(missed) - MISSED_SHOWN} more", "", "", "", "")
        out.append(t)
    else:
        out.append("no row is forecast to miss its deadline")
    sources: dict[str, list[str]] = {}
    for dev in plan.cost_model.get("devices", []):
        sources.setdefault(dev["source"], []).append(dev["device"])
    out.append("[dim]cost model: " + "; ".join(f"{src} for {', '.join(ids)}" for src, ids in sources.items()) + "[/dim]")
    for note in plan.notes:
        out.append(f"[yellow]note:[/yellow] {note}")
    return out


def _gib(n) -> str:
    return f"{n / 2**30:.2f} GiB"


def _secs(x) -> str:
    return "-" if x is None else f"{x:.1f} s"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _rate(x) -> str:
    return "-" if x is None else f"{x:.1f} tok/s"
