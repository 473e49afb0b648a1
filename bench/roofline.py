"""The best decode speed this machine could give a model: a roofline from measured peaks.

    python bench/roofline.py --model smollm2-135m [--batch 16] [--context 256] [--threads N]

Measured here: matmul FLOP/s (torch float32 GEMM, n x n, 2 n^3 FLOPs per product) and memory
bandwidth (a large tensor copy: bytes read + bytes written per second), with the same thread
count the systems get.

Per decode step at batch B and context C (float32 weights and KV cache):
    flops_per_token(C) = 2 * matmul_params + 4 * layers * C * heads * head_dim
    bytes_per_step(B, C) = weight_bytes + B * C * kv_bytes_per_token
    step_time >= max(B * flops_per_token / FLOPS, bytes_per_step / BANDWIDTH)
    best tokens/s = B / step_time = min(FLOPS / flops_per_token, B * BANDWIDTH / bytes_per_step)
At any batch size (B -> infinity, the weights' share of the traffic vanishes):
    best tokens/s <= min(FLOPS / flops_per_token, BANDWIDTH / (C * kv_bytes_per_token))
Prefill and framework overhead are left out, so every real system is below this line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(slots=True, frozen=True)
class ModelCost:
    """Per-token costs of a decoder-only model, from its config.json (no weights read)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    params: int
    matmul_params: int
    weight_bytes: int
    kv_bytes_per_token: int

    def flops_per_token(self, context: int) -> float:
        return 2.0 * self.matmul_params + 4.0 * self.layers * context * self.heads * self.head_dim


@dataclass(slots=True, frozen=True)
class Roofline:
    flops: float  # FLOP/s, float32 matmul
    bandwidth: float  # bytes/s, copy
    threads: int
    batch: int
    context: int
    compute_bound_tok_s: float
    memory_bound_tok_s: float
    best_tok_s: float
    bound: str  # "compute" | "memory"
    flops_per_token: float
    bytes_per_step: float
    best_any_batch_tok_s: float  # the limit as the batch grows without bound


    def line(self) -> str:
        return (
            f"roofline: {self.flops / 1e9:.1f} GFLOP/s (fp32 matmul), "
            f"{self.bandwidth / 1e9:.1f} GB/s (copy), {self.threads} thread(s); "
            f"decode at batch {self.batch}, context {self.context}: best "
            f"{self.best_tok_s:.0f} tok/s ({self.bound}-bound; compute limit "
            f"{self.compute_bound_tok_s:.0f}, memory limit {self.memory_bound_tok_s:.0f}) = "
            f"min(FLOPS/flops_per_token, B*BW/bytes_per_step); at any batch: best "
            f"{self.best_any_batch_tok_s:.0f} tok/s"
        )


def model_cost(config: dict, dtype_bytes: int = 4) -> ModelCost:
    """Llama/Qwen2/Mistral-style configs (and GPT-2's n_* names)."""
    hidden = config.get("hidden_size") or config["n_embd"]
    layers = config.get("num_hidden_layers") or config["n_layer"]
    heads = config.get("num_attention_heads") or config["n_head"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter = config.get("intermediate_size") or config.get("n_inner") or 4 * hidden
    vocab = config["vocab_size"]
    gated = config.get("model_type") != "gpt2"
    attn = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    mlp = (3 if gated else 2) * hidden * inter
    per_layer = attn + mlp
    lm_head = hidden * vocab
    tied = bool(config.get("tie_word_embeddings", not gated))
    params = layers * per_layer + vocab * hidden + (0 if tied else lm_head)
    return ModelCost(
        layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        params=params, matmul_params=layers * per_layer + lm_head,
        # the embedding rows read per step are negligible; the head reads the whole matrix
        weight_bytes=(layers * per_layer + lm_head) * dtype_bytes,
        kv_bytes_per_token=2 * layers * kv_heads * head_dim * dtype_bytes,
    )


def measure_flops(n: int = 1024, seconds: float = 1.0) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    return 2.0 * n**3 * reps / (time.perf_counter() - t0)


def measure_bandwidth(mbytes: int = 256, seconds: float = 1.0) -> float:
    import torch

    src = torch.ones(mbytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        dst.copy_(src)
        reps += 1
    return 2.0 * src.numel() * 4 * reps / (time.perf_counter() - t0)


def roofline(cost: ModelCost, flops: float, bandwidth: float, *, batch: int, context: int,
             threads: int) -> Roofline:
    fpt = cost.flops_per_token(context)
    bytes_step = cost.weight_bytes + batch * context * cost.kv_bytes_per_token
    compute = flops / fpt
    memory = batch * bandwidth / bytes_step
    return Roofline(
        flops=flops, bandwidth=bandwidth, threads=threads, batch=batch, context=context,
        compute_bound_tok_s=compute, memory_bound_tok_s=memory, best_tok_s=min(compute, memory),
        bound="compute" if compute < memory else "memory", flops_per_token=fpt,
        bytes_per_step=bytes_step,
        best_any_batch_tok_s=min(compute, bandwidth / max(context * cost.kv_bytes_per_token, 1)),
    )


def measure(model_path: Path, *, batch: int, context: int, threads: int,
            quick: bool = False) -> dict:
    """Everything as a dict for the results JSON (measured with `threads` threads)."""
    import torch

    torch.set_num_threads(threads)
    flops = measure_flops(256 if quick else 1024, 0.2 if quick else 1.5)
    bw = measure_bandwidth(32 if quick else 256, 0.2 if quick else 1.5)
    cost = model_cost(json.loads((Path(model_path) / "config.json").read_text()))
    line = roofline(cost, flops, bw, batch=batch, context=context, threads=threads)
    return {**asdict(line), "line": line.line(), "model": asdict(cost)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="model folder or uellm alias")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=256, help="tokens in the KV cache per row")
    ap.add_argument("--threads", type=int,
                    default=int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true", help="small, short measurements")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    path = Path(args.model)
    if not (path / "config.json").exists():
        from uellm_cli.engine.models import resolve_model

        path = resolve_model(args.model).path
    doc = measure(path, batch=args.batch, context=args.context, threads=args.threads,
                  quick=args.quick)
    print(json.dumps(doc, indent=1) if args.json else doc["line"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
