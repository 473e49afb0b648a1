"""Deployments vLLM runs as they are: data-parallel replicas of tensor x pipeline parallelism.

HELR (plan/deployer.py) places contiguous layer blocks on devices, which is pipeline
parallelism: one device works on a token at a time, and a 70B model in fp16 over four 80 GB
GPUs leaves little memory for KV. vLLM also splits every layer over a tensor-parallel group
(`tensor_parallel_size`): all t GPUs work on every token, each holds 1/t of the weights and of
the KV heads, and each layer pays two all-reduces (CostModel.tp_coef). So for `--engine vllm`
the planner also judges every shape r x (tp x pp) over GPUs of one type:
- tp in 1, 2, 4, 8, dividing the model's attention and KV heads (vLLM's requirement), its
  groups made of consecutive GPUs (on SXM boards every pair is on the NVLink switch; the
  all-reduce is priced on the group's slowest link);
- pp in 1, 2, 4, with the layers split evenly (the first stages take the remainder), as
  vLLM's VLLM_PP_LAYER_PARTITION is given them;
- r replicas on disjoint GPUs, from 1 to as many as fit (or exactly --replicas);
- only shapes whose weights fit with KV room for the job's longest row.
Every shape is judged by simulating vLLM's scheduler on it (plan/planner.py).
"""

from __future__ import annotations

from uellm_cli.plan.replicas import make_replica
from uellm_cli.plan.types import Deployment, Replica
from uellm_cli.profile.devices import Cluster
from uellm_cli.profile.model_profile import ModelProfile

TP_DEGREES = (1, 2, 4, 8)
PP_DEGREES = (1, 2, 4)


def vllm_shapes(model: ModelProfile, cluster: Cluster, *, replicas: int | None = None,
                longest_row: int | None = None) -> list[Deployment]:
    """Every r x (tp x pp) deployment of `model` on `cluster`'s GPUs (module docstring);
    `longest_row`: the job's longest prompt + budget, in tokens (default: the context)."""
    row = min(longest_row or model.max_context, model.max_context)
    by_type: dict[str, list[str]] = {}
    for dev in cluster.devices:
        if dev.kind == "gpu":
            by_type.setdefault(dev.name, []).append(dev.id)
    out: list[Deployment] = []
    for name, gpus in by_type.items():
        for tp in TP_DEGREES:
            if tp > len(gpus) or not _splits_heads(model, tp):
                continue
            for pp in PP_DEGREES:
                per_replica = tp * pp
                if per_replica > len(gpus) or pp > model.num_layers:
                    continue
                reps = _replicas(model, cluster, gpus, tp, pp, row)
                counts = range(1, len(reps) + 1) if replicas is None else (replicas,)
                for r in counts:
                    if r > len(reps):
                        continue
                    out.append(Deployment(
                        f"tp{tp}-pp{pp}", reps[:r],
                        note=f"{r} replica(s) x tensor parallel {tp} x pipeline {pp} on {name}"))
    return out


def _splits_heads(model: ModelProfile, tp: int) -> bool:
    heads, kv = model.num_attention_heads, model.num_kv_heads
    return heads % tp == 0 and (kv % tp == 0 or tp % kv == 0)


def _replicas(model: ModelProfile, cluster: Cluster, gpus: list[str], tp: int, pp: int,
              row_tokens: int) -> list[Replica]:
    """As many replicas of the shape as fit on `gpus`, in order."""
    per_replica = tp * pp
    base, extra = divmod(model.num_layers, pp)
    layers = [base + (1 if i < extra else 0) for i in range(pp)]
    min_kv = model.kv_bytes_per_token * row_tokens
    out: list[Replica] = []
    for start in range(0, len(gpus) - per_replica + 1, per_replica):
        mine = gpus[start:start + per_replica]
        groups = [tuple(mine[i * tp:(i + 1) * tp]) for i in range(pp)]
        stages = [g if tp > 1 else g[0] for g in groups]
        rep = make_replica(len(out), model, cluster, stages, layers)
        if rep.kv_budget_bytes < min_kv:
            break  # the weights leave no room for the longest row
        out.append(rep)
    return out
