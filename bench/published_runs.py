"""uellm's GPU forecasts against published throughput runs: the validation table of
docs/planner.md ("Forecasts for GPUs we do not have").

    python bench/published_runs.py            # the table, as Markdown
    python bench/published_runs.py --fit      # search the vLLM GPU roofline on the FITTED runs

Each run is a published offline measurement with fixed input and output lengths: N requests
of `isl` prompt tokens and `osl` output tokens, all queued at once, on `gpus` of one type with
tensor parallelism `tp`. The forecast is `uellm plan --engine vllm` on the same job with that
deployment forced: the step-level simulation of continuous batching (plan/continuous.py, at the
max_num_seqs the plan picks: the one whose simulation ends first) with
the vLLM GPU roofline of plan/costmodel.py (ENGINE_ROOFLINES["vllm"].gpu), whose efficiencies
were fitted on the runs marked FITTED (`--fit` repeats that search) and are checked on the rest.
The figure compared is total output tokens per second, over the generation (queue to last token).
`--fit` searches the shared overheads and each GPU's efficiencies on the fitted one-GPU runs,
then the all-reduce efficiency (comm_eff) on the fitted tensor-parallel run.

Sources (read 2026-12-02):
- S1: NVIDIA TensorRT-LLM "Performance Overview", data of v0.13.0 (trtllm-bench, in-flight
  batching, requests at an infinite rate, fixed lengths; "Token Throughput (tokens/sec)" is
  output tokens of the whole system), github.com/NVIDIA/TensorRT-LLM/blob/v0.13.0/docs/source/
  performance/perf-overview.md. Requests: 30000 at 128/128, 3000 at 128/2048 and 2048/128.
- S6: LMDeploy TurboMind v0.2.0 benchmark on A100-80G, github.com/InternLM/lmdeploy
  (commit f44ba31), docs/en/benchmark/a100_fp16.md: static inference, batch 64.
TensorRT-LLM is the fastest engine on these GPUs; vLLM is commonly within a small factor of
it. The roofline is fitted to it, so forecasts are of a well-tuned engine.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from uellm_cli.plan.continuous import stream_limits  # noqa: E402
from uellm_cli.plan.costmodel import ENGINE_ROOFLINES, CostModel, Roofline  # noqa: E402
from uellm_cli.plan.parallel import vllm_shapes  # noqa: E402
from uellm_cli.plan.steptime import step_timer  # noqa: E402
from uellm_cli.plan.stream_forecast import SEQS_CANDIDATES, _search, _simulate  # noqa: E402
from uellm_cli.plan.types import Query  # noqa: E402
from uellm_cli.profile.hardware import parse_cluster_spec  # noqa: E402
from uellm_cli.profile.model import (
    profile_of,  # noqa: E402
    resolve_config,  # noqa: E402
)

SIMULATED_REQUESTS = 3000  # enough for the steady state; 30000 only repeats it ten times


@dataclass(slots=True, frozen=True)
class PublishedRun:
    source: str
    engine: str
    model: str  # uellm alias
    gpus: str  # cluster spec
    tp: int
    isl: int
    osl: int
    requests: int
    published_tok_s: float  # output tokens/s, whole system
    fitted: bool = False


RUNS: tuple[PublishedRun, ...] = (
    # S1, TensorRT-LLM 0.13.0, FP16, A100-SXM4-80GB
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-2-7b", "1xA100-80GB", 1, 128, 128, 30000, 5238.68, fitted=True),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-2-7b", "1xA100-80GB", 1, 2048, 128, 3000, 560.35, fitted=True),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-2-7b", "1xA100-80GB", 1, 128, 2048, 3000, 1807.39),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-3.1-8b", "1xA100-80GB", 1, 128, 128, 30000, 6687.04),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-3.1-8b", "1xA100-80GB", 1, 2048, 128, 3000, 796.17),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-2-70b", "4xA100-80GB", 4, 128, 128, 30000, 2766.00, fitted=True),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-2-70b", "4xA100-80GB", 4, 2048, 128, 3000, 321.72),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-2-70b", "8xA100-80GB", 8, 128, 128, 30000, 4742.74),
    # S1, FP16, H100 80GB HBM3
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-2-7b", "1xH100-80GB", 1, 128, 128, 30000, 11436.31, fitted=True),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-2-7b", "1xH100-80GB", 1, 2048, 128, 3000, 1157.55, fitted=True),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-3.1-8b", "1xH100-80GB", 1, 128, 128, 30000, 15647.83),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-2-70b", "4xH100-80GB", 4, 128, 128, 30000, 6420.88),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-3.1-70b", "4xH100-80GB", 4, 128, 128, 30000, 5845.53),
    PublishedRun("S1", "TensorRT-LLM 0.13.0", "llama-2-70b", "4xH100-80GB", 4, 2048, 128, 3000, 755.30),
)


def forecast(run: PublishedRun, roofline: Roofline | None = None, *,
             requests: int = SIMULATED_REQUESTS) -> dict:
    """uellm's forecast of `run`: output tok/s, and the deployment and limits it simulated."""
    config, name, _ = resolve_config(run.model)
    model = profile_of(config, name, "float16")
    cluster = parse_cluster_spec(run.gpus)
    shapes = [d for d in vllm_shapes(model, cluster, longest_row=run.isl + run.osl)
              if d.strategy == f"tp{run.tp}-pp1" and len(d.replicas) == 1]
    if not shapes:
        raise ValueError(f"{run.model} does not fit {run.gpus} at tensor parallel {run.tp}")
    rep = shapes[0].replicas[0]
    cost = CostModel(model, cluster, {}, roofline or ENGINE_ROOFLINES["vllm"])
    n = min(requests, run.requests)
    rows = [Query(i, f"r{i}", run.isl, run.osl, run.osl, run.osl, None) for i in range(n)]
    step = step_timer(cost, rep)

    def limits_for(seqs):
        return stream_limits([(run.isl, run.osl)] * n, kv_bytes_per_token=model.kv_bytes_per_token,
                             max_context=model.max_context, kv_budget_bytes=rep.kv_budget_bytes,
                             max_num_seqs=seqs, on_gpu=True)

    # as the plan chooses: no deadlines, so the max_num_seqs whose simulation ends first
    limits, order, _, _ = _search(rows, [], SEQS_CANDIDATES, limits_for, step, 0.0, {})
    sim = _simulate(order, limits, step, 0.0)
    tok_s = n * run.osl / sim.end_s
    return {"tok_s": tok_s, "error": tok_s / run.published_tok_s - 1.0,
            "max_num_seqs": limits.max_num_seqs, "kv_blocks": limits.kv_blocks,
            "preemptions": sim.preemptions}


def table(roofline: Roofline | None = None) -> list[dict]:
    return [{"run": run, **forecast(run, roofline)} for run in RUNS]


def markdown(rows: list[dict]) -> str:
    lines = ["| fitted | source | engine | model | GPUs | TP | in/out | published tok/s | "
             "uellm forecast | error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: not r["run"].fitted):
        run = r["run"]
        lines.append(f"| {'yes' if run.fitted else 'no'} | {run.source} | {run.engine} | {run.model} | "
                     f"{run.gpus} | {run.tp} | {run.isl}/{run.osl} | {run.published_tok_s:,.0f} | "
                     f"{r['tok_s']:,.0f} | {r['error']:+.1%} |")
    held = [abs(r["error"]) for r in rows if not r["run"].fitted]
    lines += ["", f"Runs not fitted: {len(held)}, largest error {max(held):.1%}, "
                  f"mean {sum(held) / len(held):.1%}."]
    return "\n".join(lines) + "\n"


def fit() -> Roofline:
    """Grid search on the FITTED runs: the overheads shared by every GPU, and for each GPU
    type its compute and bandwidth efficiencies; least worst |log error|."""
    base = ENGINE_ROOFLINES["vllm"]
    fitted = [r for r in RUNS if r.fitted and r.tp == 1]
    names = sorted({_gpu_name(r) for r in fitted})
    best = None
    for lo, so in itertools.product((0.0, 1e-5, 2e-5), (0.0, 1e-3, 2e-3)):
        gpu = replace(base.gpu, layer_overhead_s=lo, step_overhead_s=so)
        effs, worst = {}, 0.0
        for name in names:
            mine = [r for r in fitted if _gpu_name(r) == name]
            scored = []
            for ce, be in itertools.product((0.5, 0.6, 0.7, 0.8), (0.6, 0.7, 0.8, 0.9)):
                roof = Roofline(gpu=gpu, cpu=base.cpu, gpu_efficiency={name: (ce, be)})
                scored.append((max(abs(math.log(forecast(r, roof)["tok_s"] / r.published_tok_s))
                                   for r in mine), (ce, be)))
            err, effs[name] = min(scored)
            worst = max(worst, err)
        if best is None or worst < best[0]:
            best = (worst, Roofline(gpu=gpu, cpu=base.cpu, gpu_efficiency=effs))
            print(f"worst {math.exp(worst) - 1:.1%}: overheads {lo}, {so}; {effs}", file=sys.stderr)
    roof = best[1]
    parallel = [r for r in RUNS if r.fitted and r.tp > 1]  # then the all-reduces, on these
    scored = []
    for comm in (1.0, 0.7, 0.5, 0.35, 0.25, 0.18):
        trial = replace(roof, gpu=replace(roof.gpu, comm_eff=comm))
        scored.append((max(abs(math.log(forecast(r, trial)["tok_s"] / r.published_tok_s))
                           for r in parallel), comm))
    err, comm = min(scored)
    print(f"comm_eff {comm}: worst {math.exp(err) - 1:.1%} on the tensor-parallel runs fitted", file=sys.stderr)
    return replace(roof, gpu=replace(roof.gpu, comm_eff=comm))


def _gpu_name(run: PublishedRun) -> str:
    return parse_cluster_spec(run.gpus).devices[0].name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fit", action="store_true", help="search the roofline on the fitted runs")
    args = ap.parse_args(argv)
    roof = fit() if args.fit else None
    print(markdown(table(roof)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
