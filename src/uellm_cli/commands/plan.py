"""`uellm plan JOB`: the deployment, batch timeline and forecast, without loading any weights.

Works for hardware the user does not have (`--cluster 8xH100-80GB`). The job is read,
tokenised and planned by the same steps as `uellm run` (run/forecast.py), so the two agree.
"""

from __future__ import annotations

import json
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
    JsonOpt,
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


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)


def plan_command(
    job: JobArg,
    model: ModelOpt = DEFAULT_MODEL,
    cluster: ClusterOpt = None,
    policy: PolicyOpt = "slo-odbs",
    objective: Annotated[str, typer.Option("--objective", help="helr (best SLO attainment per device), lr (least latency), he (fewest devices).")] = "helr",
    max_new_tokens: MaxNewTokensOpt = 256,
    slo: SloOpt = None,
    max_batch_size: MaxBatchSizeOpt = None,
    on_miss: OnMissOpt = "run",
    predictor: PredictorOpt = "auto",
    dtype: DtypeOpt = None,
    input_format: FormatOpt = None,
    raw_prompt: RawPromptOpt = False,
    threads: ThreadsOpt = None,
    baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also judge accelerate's auto/balanced/sequential maps (imports torch).")] = True,
    engine: EngineOpt = "auto",
    backend: BackendOpt = "local",
    ray_address: RayAddressOpt = None,
    replicas: ReplicasOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan a job: deployment (HELR vs accelerate), batches (SLO-ODBS or a baseline), forecast."""
    from uellm_cli.config import RunConfig
    from uellm_cli.plan.planner import plan_to_dict
    from uellm_cli.report.plan_view import render_plan
    from uellm_cli.run.forecast import forecast

    cfg = RunConfig(job=job, model=model, input_format=input_format, max_new_tokens=max_new_tokens,
                    slo_s=slo, policy=policy, predictor=predictor, max_batch_size=max_batch_size,
                    dtype=dtype, raw_prompt=raw_prompt, cluster=cluster, on_miss=on_miss,
                    threads=threads, engine=engine, backend=backend, ray_address=ray_address,
                    replicas=replicas)
    planned = forecast(cfg, objective=objective, baselines=baselines).planned
    if as_json:
        typer.echo(json.dumps(plan_to_dict(planned.plan), default=str))
        return
    for part in render_plan(planned.plan, planned.model, planned.target.cluster, planned.queries):
        console.print(part)
