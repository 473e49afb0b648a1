"""Hand-made ModelProfile / Cluster / Query builders shared by the planner tests (no tests here)."""

from __future__ import annotations

from uellm_cli.plan.types import Query
from uellm_cli.profile.devices import Cluster, Device, Link
from uellm_cli.profile.model_profile import ModelProfile

GB = 10**9


def llama_like(layers: int = 32, hidden: int = 4096, kv_heads: int = 32, heads: int = 32,
               inter: int = 11008, vocab: int = 32000, dtype_bytes: int = 2, tied: bool = False,
               name: str = "llama-like") -> ModelProfile:
    """A Llama-shaped profile, sizes computed the way the profiler defines them."""
    head_dim = hidden // heads
    layer_params = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + 3 * hidden * inter
    embed = vocab * hidden
    head = 0 if tied else vocab * hidden
    return ModelProfile(
        name=name, architecture="LlamaForCausalLM", dtype="float16", dtype_bytes=dtype_bytes,
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, vocab_size=vocab, max_context=4096,
        layer_bytes=layer_params * dtype_bytes, embed_bytes=embed * dtype_bytes,
        head_bytes=(head + hidden) * dtype_bytes,
        kv_bytes_per_token=2 * layers * kv_heads * head_dim * dtype_bytes,
        flops_per_token=2.0 * (layers * layer_params + vocab * hidden),
        attn_flops_per_token_per_ctx=4.0 * hidden * layers,
        activation_bytes_per_token=hidden * dtype_bytes, tied_embeddings=tied,
    )


def gpu(i: int, mem_gb: float = 24, tflops: float = 71, bw_gbs: float = 936, name: str = "RTX-3090",
        node: str = "local") -> Device:
    return Device(f"cuda:{i}", name, "gpu", int(mem_gb * GB), tflops * 1e12, bw_gbs * 1e9, node)


def cluster(devices: list[Device], links: dict | None = None,
            default: Link | None = None) -> Cluster:
    return Cluster(devices, links or {}, default or Link("pcie", 16e9, 10e-6))


def query(i: int, prompt: int = 100, pred: int = 100, upper: int | None = None, deadline: float | None = None,
          max_new: int | None = None, priority: int = 0, group: tuple = ("greedy", ())) -> Query:
    return Query(i, f"r{i}", prompt, max_new if max_new is not None else max(pred, upper or 0),
                 pred, upper if upper is not None else pred, deadline, priority, group)
