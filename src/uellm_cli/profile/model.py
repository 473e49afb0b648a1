"""Model profile built on the meta device (no weights): sizes, KV bytes per token, FLOPs.

SKELETON: ModelProfile is the contract; builders from folders, .gguf files and aliases follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
