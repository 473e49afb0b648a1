"""Accelerate's own placements (`auto`, `balanced`, `sequential`) as Deployments the cost model
can judge beside HELR. The only plan/ module that touches torch/accelerate, lazily.

accelerate plans on integer GPU ids; we pass fake ids 0..n-1 standing for the cluster's devices
in order (usable memory = MEM_FRACTION of each device, as for HELR), then map the ids back.
- auto:       what transformers' device_map="auto" does: get_balanced_memory, then
              infer_auto_device_map (so it is the same map as `balanced` on the same input;
              both are listed so users see it);
- balanced:   get_balanced_memory(low_zero=False) + infer_auto_device_map;
- sequential: infer_auto_device_map on the raw memory (fill device 0, then 1, ...).
A map that needs the CPU or disk (the model does not fit the devices) is left out.
"""

from __future__ import annotations

from uellm_cli.plan.replicas import (
    MEM_FRACTION,
    replica_kv_budget,
    stages_from_device_map,
    usable_bytes,
)
from uellm_cli.plan.types import Deployment, Replica
from uellm_cli.profile.devices import Cluster
from uellm_cli.profile.model_profile import ModelProfile

STRATEGIES = ("auto", "balanced", "sequential")


def accelerate_device_maps(meta_model, model: ModelProfile, cluster: Cluster,
                           mem_fraction: float = MEM_FRACTION) -> dict[str, dict[str, str] | None]:
    """strategy -> accelerate device_map with the cluster's device ids (None when it spills)."""
    import logging
    import warnings

    # accelerate warns that fake GPU ids are "not available" (they are not meant to be) and
    # about offloading (a map that offloads is dropped anyway): library code stays quiet.
    acc_log = logging.getLogger("accelerate.utils.modeling")
    level = acc_log.level
    acc_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _maps(meta_model, model, cluster, mem_fraction)
    finally:
        acc_log.setLevel(level)


def _maps(meta_model, model: ModelProfile, cluster: Cluster, mem_fraction: float) -> dict[str, dict[str, str] | None]:
    import torch
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    ids = [d.id for d in cluster.devices]
    max_memory = {i: usable_bytes(d.memory_bytes, mem_fraction) for i, d in enumerate(cluster.devices)}
    no_split = list(getattr(meta_model, "_no_split_modules", None) or [])
    dtype = getattr(torch, model.dtype, None)
    out: dict[str, dict[str, str] | None] = {}
    for name in STRATEGIES:
        mem = dict(max_memory)
        if name != "sequential":
            mem = get_balanced_memory(meta_model, max_memory=mem, no_split_module_classes=no_split,
                                      dtype=dtype, low_zero=False)
        raw = infer_auto_device_map(meta_model, max_memory=mem, no_split_module_classes=no_split, dtype=dtype)
        if any(not isinstance(v, int) or v >= len(ids) for v in raw.values()):
            out[name] = None  # spills to "cpu"/"disk": it does not fit the devices
            continue
        out[name] = {k: ids[v] for k, v in raw.items()}
    return out


def accelerate_deployments(meta_model, model: ModelProfile, cluster: Cluster,
                           mem_fraction: float = MEM_FRACTION) -> list[Deployment]:
    """One single-replica Deployment per accelerate strategy whose map fits the devices."""
    deps = []
    maps = accelerate_device_maps(meta_model, model, cluster, mem_fraction)
    for name in STRATEGIES:
        dmap = maps.get(name)
        if dmap is None:
            continue
        stages = stages_from_device_map(model, cluster, dmap)
        replica = Replica(0, stages, dmap, replica_kv_budget(model, cluster, stages, mem_fraction))
        same = [o for o in STRATEGIES if o != name and maps.get(o) == dmap]
        note = f"accelerate {name}" + (f" (same map as {', '.join(same)})" if same else "")
        deps.append(Deployment(name, [replica], note=note))
    return deps
