"""Planner speed: make_plan on 1k / 10k / 100k synthetic rows, and HELR on 8 devices x 80 layers.

Targets (issue 3): 100,000 rows planned in under 2 s; the 8-device, 80-layer placement in under
1 s. Planner only: rows are synthetic Queries (no reading, no tokenising), the model and the
cluster are hand-made profiles (a Llama-2-7B-like model on 4 x A100-40GB; a 70B-like model on
8 x 80 GB GPUs with mixed NVLink/PCIe links).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_planner.py [--repeat 3] [--policy slo-odbs]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.deployer import PlacementSearch
from uellm_cli.plan.planner import make_plan
from uellm_cli.plan.scheduler import SCHEDULERS
from uellm_cli.plan.types import Query
from uellm_cli.profile.devices import Cluster, Device, Link
from uellm_cli.profile.model_profile import ModelProfile


def llama(layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int = 32000) -> ModelProfile:
    hd = hidden // heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_heads * hd + 3 * hidden * inter
    return ModelProfile(
        name=f"llama-{layers}L", architecture="LlamaForCausalLM", dtype="float16", dtype_bytes=2,
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_kv_heads=kv_heads,
        head_dim=hd, vocab_size=vocab, max_context=4096, layer_bytes=2 * per_layer,
        embed_bytes=2 * vocab * hidden, head_bytes=2 * (vocab * hidden + hidden),
        kv_bytes_per_token=2 * layers * kv_heads * hd * 2,
        flops_per_token=2.0 * (layers * per_layer + vocab * hidden),
        attn_flops_per_token_per_ctx=4.0 * hidden * layers, activation_bytes_per_token=2 * hidden,
    )


def gpus(n: int, mem_gb: float, tflops: float, bw_gbs: float, name: str) -> Cluster:
    devs = [Device(f"cuda:{i}", name, "gpu", int(mem_gb * 1e9), tflops * 1e12, bw_gbs * 1e9) for i in range(n)]
    links = {}
    for a in range(n):
        for b in range(a + 1, n):
            same_pair = a // 2 == b // 2
            links[(f"cuda:{a}", f"cuda:{b}")] = (Link("nvlink", 300e9, 2e-6) if same_pair
                                                 else Link("pcie", 32e9, 1e-5))
    return Cluster(devs, links)


def workload(n: int, seed: int = 0) -> list[Query]:
    rng = random.Random(seed)
    groups = [("greedy", ()), ("sample", 0.7, 1.0, None, ())]
    return [
        Query(i, f"r{i}", rng.randint(20, 800), 512, (p := rng.randint(10, 400)), min(512, int(p * 1.5)),
              rng.uniform(30, 30 + n * 0.05), rng.choice([0, 0, 1]), rng.choice(groups),
              expected_tokens=min(512, int(p * 1.2)))  # a two-part predictor's mean
        for i in range(n)
    ]


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds (the CPU time shows what other load on the machine costs)."""
    wall, cpu, out = [], [], None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--policy", default="slo-odbs", choices=sorted(SCHEDULERS))
    ap.add_argument("--engine", default="hf", choices=("hf", "vllm"),
                    help="vllm: the plan of continuous batching (step-level simulation)")
    args = ap.parse_args()

    model, cl = llama(32, 4096, 32, 32, 11008), gpus(4, 40, 312, 1555, "A100-40GB")
    print(f"make_plan, policy {args.policy}, engine {args.engine}, {model.name} on 4 x A100-40GB "
          f"(median of {args.repeat})")
    print("| rows | wall s | CPU s | batches | replicas | forecast makespan (s) | SLO attainment |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in (1_000, 10_000, 100_000):
        qs = workload(n)
        secs, cpu, plan = timed(lambda qs=qs: make_plan(qs, model, cl, policy=args.policy,
                                                        engine=args.engine), args.repeat)
        att = plan.summary["slo_attainment"]
        print(f"| {n:,} | {secs:.3f} | {cpu:.3f} | {len(plan.batches):,} | {len(plan.deployment.replicas)} | "
              f"{plan.summary['makespan_s']:.0f} | {att:.3f} |")

    big, cl8 = llama(80, 8192, 64, 8, 28672), gpus(8, 80, 989, 3350, "H100-80GB")
    cost = CostModel(big, cl8)
    secs, cpu, search = timed(lambda: PlacementSearch(big, cl8, cost, kv_reserve_bytes=cost.kv_bytes(16, 2048),
                                                 ref_batch=16, ref_context=1024), args.repeat)
    reps = search.replicas("lr")
    print()
    print(f"HELR placement search, {big.name} ({big.weight_bytes / 1e9:.0f} GB) on 8 x H100-80GB: "
          f"{secs:.3f} s wall, {cpu:.3f} s CPU (median of {args.repeat}); {len(reps)} replica(s): "
          + "; ".join(f"{'+'.join(p.devices)} {'/'.join(map(str, p.layers))}" for p in reps))


if __name__ == "__main__":
    main()
