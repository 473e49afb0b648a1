"""ModelProfile: what the planner knows of a model, in bytes for a dtype (pure data, no torch).
Built on the meta device by profile/model.py; read by the planner, the cost model and report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from uellm_cli.errors import ConfigError


@dataclass(slots=True, frozen=True)
class ModelProfile:
    """What the planner needs to know about a model, in bytes for the chosen dtype.

    layer_bytes: weights of one decoder layer (layers are uniform in every supported family).
    embed_bytes: modules before the first layer (token embeddings, rotary tables...).
    head_bytes: modules after the last layer (final norm, lm_head); 0 for lm_head when tied
        to the embeddings (the tied weight then sits with the embeddings, on the first stage).
    kv_bytes_per_token: K and V of ALL layers for one token (2 * layers * kv_heads * head_dim *
        dtype_bytes): exact for multi-head, grouped-query and multi-query attention.
    flops_per_token: forward FLOPs of one token at zero context (2 * matmul params); attention
        over the context adds attn_flops_per_token_per_ctx * context.
    activation_bytes_per_token: hidden state passed between two layers (hidden * dtype_bytes).
    module names: what accelerate device_maps use for this architecture.
    """

    name: str
    architecture: str
    dtype: str
    dtype_bytes: int
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    layer_bytes: int
    embed_bytes: int
    head_bytes: int
    kv_bytes_per_token: int
    flops_per_token: float
    attn_flops_per_token_per_ctx: float
    activation_bytes_per_token: int
    tied_embeddings: bool = False
    layers_prefix: str = "model.layers"
    embed_modules: tuple[str, ...] = ("model.embed_tokens", "model.rotary_emb")
    head_modules: tuple[str, ...] = ("model.norm", "lm_head")
    extra: dict = field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        return self.embed_bytes + self.num_layers * self.layer_bytes + self.head_bytes

    @property
    def kv_bytes_per_token_per_layer(self) -> float:
        return self.kv_bytes_per_token / self.num_layers

    @property
    def num_params(self) -> int:
        """Parameters (tied weights once), from the bytes at this dtype."""
        return int(self.extra.get("num_params", self.weight_bytes // self.dtype_bytes))

    def layer_names(self) -> list[str]:
        """The device_map keys of the decoder layers, in order."""
        return [f"{self.layers_prefix}.{i}" for i in range(self.num_layers)]


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}
_DTYPE_SYNONYMS = {"fp32": "float32", "float": "float32", "f32": "float32", "fp16": "float16",
                   "half": "float16", "f16": "float16", "bf16": "bfloat16", "fp8": "float8_e4m3fn"}
DEFAULT_DTYPE = "float16"
CPU_DTYPE = "float32"


def normalize_dtype(dtype) -> str:
    """'fp16', 'torch.float16', torch.float16 -> 'float16'; unknown names raise ConfigError."""
    name = str(dtype).strip().lower().removeprefix("torch.")
    name = _DTYPE_SYNONYMS.get(name, name)
    if name not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPE_BYTES)}")
    return name


def planning_dtype(cluster, dtype: str | None = None) -> str | None:
    """The dtype to plan with: the one asked for; float32 when the cluster has no GPU (the
    engine's CPU default); else None, meaning the checkpoint's own dtype."""
    if dtype:
        return normalize_dtype(dtype)
    has_gpu = any(d.kind == "gpu" for d in cluster.devices)
    return None if has_gpu else CPU_DTYPE


# ---------------------------------------------------------------------------- JSON


def model_profile_to_dict(profile: ModelProfile) -> dict:
    d = asdict(profile)
    d["weight_bytes"] = profile.weight_bytes
    return d


def model_profile_from_dict(d: dict) -> ModelProfile:
    names = {f.name for f in fields(ModelProfile)}
    kwargs = {k: v for k, v in d.items() if k in names}
    for key in ("embed_modules", "head_modules"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return ModelProfile(**kwargs)
