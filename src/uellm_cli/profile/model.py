"""Model profile built on the meta device (no weights): sizes, KV bytes per token, FLOPs.

Sources: a local Hugging Face folder (config.json), a .gguf file (metadata only, through
transformers' GGUF config reader), or a built-in alias (profile/aliases.py). The model is built
on torch's meta device, so even llama-2-70b profiles in about a second with no memory. torch and
transformers are imported inside the functions that need them.

dtype: an explicit dtype wins; else the checkpoint's (config `dtype`/`torch_dtype`, the
published dtype for aliases); else float16. The engine on the CPU loads float32, so planners
pass `model_profile.planning_dtype(cluster)`, which says float32 for a cluster without GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

from uellm_cli.errors import ConfigError, ModelNotFoundError
from uellm_cli.profile import aliases
from uellm_cli.profile.model_profile import (
    DEFAULT_DTYPE,
    DTYPE_BYTES,
    ModelProfile,
    normalize_dtype,
)

# ---------------------------------------------------------------------------- sources


def resolve_config(source: str):
    """(config, name, how) for an alias, a model folder or a .gguf file.

    `config` is a transformers PretrainedConfig, or a dict for architectures transformers does
    not build (ChatGLM2): profile_from_config accepts both.
    """
    data = aliases.alias_config(source)
    if data is not None:
        return _config_from_dict(data), aliases.canonical_alias(source), "alias"
    path = Path(source).expanduser()
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ModelNotFoundError(f"{path} has no config.json", hint="point --model at a Hugging Face model folder")
        raw = json.loads(cfg_file.read_text())
        name = aliases.alias_of_folder(path) or path.name  # the name a run gives it
        if raw.get("model_type") == "chatglm":
            return raw, name, "folder"
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(path), local_files_only=True), name, "folder"
        except (ValueError, KeyError, OSError) as exc:
            raise ConfigError(f"cannot read the config of {path}: {str(exc).splitlines()[0]}") from exc
    if path.suffix.lower() == ".gguf" and path.is_file():
        return _gguf_config(path), path.stem, "gguf"
    raise ModelNotFoundError(
        f"model {source!r} is neither a model folder, a .gguf file nor a built-in alias",
        hint=f"aliases: {', '.join(aliases.alias_names())}",
    )


def _config_from_dict(data: dict):
    if data.get("model_type") == "chatglm":
        return data
    from transformers import AutoConfig

    kwargs = {k: v for k, v in data.items() if k not in ("model_type", "repo", "dtype")}
    config = AutoConfig.for_model(data["model_type"], **kwargs)
    config.dtype = data.get("dtype")
    return config


def _gguf_config(path: Path):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ConfigError(f"cannot read GGUF metadata of {path}: {str(exc).splitlines()[0]}") from exc
    config.dtype = None  # GGUF weights are quantised: the engine's dtype decides
    return config


def chatglm_equivalent(raw: dict):
    """A Qwen2 config with ChatGLM2's exact parameter shapes.

    ChatGLM2's layer: RMSNorm, fused qkv Linear with bias (hidden -> heads*d + 2*groups*d), dense
    without bias, RMSNorm, SwiGLU MLP (hidden -> 2*ffn fused, ffn -> hidden), no biases there.
    Qwen2's layer has the same tensors split into q/k/v (with bias), o, gate/up/down, so every
    byte count, KV size and FLOP count is identical; only module names differ (set by the caller).
    """
    from transformers import Qwen2Config

    heads = raw["num_attention_heads"]
    d = raw.get("kv_channels") or raw["hidden_size"] // heads
    groups = raw.get("multi_query_group_num", heads) if raw.get("multi_query_attention") else heads
    config = Qwen2Config(
        hidden_size=raw["hidden_size"], intermediate_size=raw["ffn_hidden_size"],
        num_hidden_layers=raw["num_layers"], num_attention_heads=heads, num_key_value_heads=groups,
        head_dim=d, vocab_size=raw["padded_vocab_size"], max_position_embeddings=raw.get("seq_length", 2048),
        rms_norm_eps=raw.get("layernorm_epsilon", 1e-5), tie_word_embeddings=False, use_sliding_window=False,
    )
    config.dtype = raw.get("dtype") or raw.get("torch_dtype")
    return config


CHATGLM_NAMES = {
    "layers_prefix": "transformer.encoder.layers",
    "embed_modules": ("transformer.embedding", "transformer.rotary_pos_emb"),
    "head_modules": ("transformer.encoder.final_layernorm", "transformer.output_layer"),
}


# ---------------------------------------------------------------------------- profiles


def load_model_profile(source: str, dtype: str | None = None) -> ModelProfile:
    """The profile of an alias, a model folder or a .gguf file, for `dtype` (see module doc)."""
    config, name, how = resolve_config(source)
    profile = profile_of(config, name, dtype)
    return _with_extra(profile, source=how, path=None if how == "alias" else str(Path(source).expanduser().resolve()))


def profile_of(config, name: str, dtype: str | None = None) -> ModelProfile:
    """The profile of a config at `dtype`; None means the checkpoint's (float16 if unknown)."""
    chosen = normalize_dtype(dtype) if dtype else _config_dtype(config) or DEFAULT_DTYPE
    return profile_from_config(config, name, chosen)


def _config_dtype(config) -> str | None:
    raw = config.get("dtype") or config.get("torch_dtype") if isinstance(config, dict) else getattr(config, "dtype", None)
    if raw in (None, "auto"):
        return None
    try:
        return normalize_dtype(raw)
    except ConfigError:
        return None


def build_meta_model(source, dtype: str | None = None):
    """A transformers model for `source` (alias, folder, .gguf, or a config) on the meta device:
    real module names and shapes, no weights. ChatGLM2 is built as its Qwen2 equivalent."""
    import torch
    from transformers import AutoModelForCausalLM

    config = resolve_config(source)[0] if isinstance(source, str) else source
    if isinstance(config, dict):
        config = chatglm_equivalent(config) if config.get("model_type") == "chatglm" else _config_from_dict(config)
    chosen = normalize_dtype(dtype) if dtype else _config_dtype(config) or DEFAULT_DTYPE
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, chosen))


def profile_from_config(config, name: str, dtype: str) -> ModelProfile:
    """Build the meta model of `config` and measure it (see ModelProfile for each field)."""
    chatglm = isinstance(config, dict) and config.get("model_type") == "chatglm"
    dtype = normalize_dtype(dtype)
    model = build_meta_model(chatglm_equivalent(config) if chatglm else config, dtype)
    cfg = model.config
    nbytes = DTYPE_BYTES[dtype]
    layers = int(cfg.num_hidden_layers)
    prefix, layer_list = _find_layers(model, layers)
    sizes = _tensor_sizes(model, nbytes)
    layer_sizes = [_sum_under(sizes, f"{prefix}.{i}") for i in range(layers)]
    embed, head = _split_outer(model, prefix)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    kv_heads = kv_heads_of(cfg, heads)
    matmul = _matmul_params(model)
    tied = bool(getattr(cfg, "tie_word_embeddings", False)) and _embedding_tied(model)
    extra = {
        "num_params": sum(sizes_n for _, sizes_n in _param_counts(model)),
        "matmul_params": matmul,
        "total_bytes": sum(sizes.values()),
        "model_type": "chatglm" if chatglm else cfg.model_type,
        "config_class": type(cfg).__name__,
    }
    if chatglm:
        extra["built_as"] = "qwen2 (same tensor shapes as ChatGLM2)"
    if tied:
        extra["tied_head_bytes"] = int(cfg.vocab_size * cfg.hidden_size * nbytes)
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True):
        extra["sliding_window"] = int(window)
    if len(set(layer_sizes)) > 1:
        extra["layer_bytes_min"] = min(layer_sizes)
    names = CHATGLM_NAMES if chatglm else {"layers_prefix": prefix, "embed_modules": tuple(embed),
                                          "head_modules": tuple(head)}
    return ModelProfile(
        name=name, architecture=extra["model_type"], dtype=dtype, dtype_bytes=nbytes,
        num_layers=layers, hidden_size=int(cfg.hidden_size), num_attention_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, vocab_size=int(cfg.vocab_size),
        max_context=max_context_of(cfg), layer_bytes=max(layer_sizes),
        embed_bytes=sum(_sum_under(sizes, m) for m in embed),
        head_bytes=sum(_sum_under(sizes, m) for m in head),
        kv_bytes_per_token=2 * layers * kv_heads * head_dim * nbytes,
        flops_per_token=2.0 * matmul,
        attn_flops_per_token_per_ctx=4.0 * layers * heads * head_dim,
        activation_bytes_per_token=int(cfg.hidden_size) * nbytes,
        tied_embeddings=tied, extra=extra, **names,
    )


def _with_extra(profile: ModelProfile, **more) -> ModelProfile:
    from dataclasses import replace

    return replace(profile, extra={**profile.extra, **{k: v for k, v in more.items() if v is not None}})


def _find_layers(model, layers: int):
    """The ModuleList holding the decoder layers: the largest one with `layers` children."""
    import torch

    best = None
    for qual, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            n = sum(p.numel() for p in module.parameters())
            if best is None or n > best[2]:
                best = (qual, module, n)
    if best is None:
        raise ConfigError(f"cannot find the {layers} decoder layers of {type(model).__name__}")
    return best[0], best[1]


def _tensor_sizes(model, nbytes: int) -> dict[str, int]:
    """Bytes of every parameter (shared ones once) and buffer at the dtype, as accelerate counts
    them: floating tensors at min(dtype, own size), integer/bool tensors at their own size."""
    out = {}
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        own = t.element_size()
        out[name] = t.numel() * (min(nbytes, own) if t.is_floating_point() else own)
    return out


def _param_counts(model):
    return [(n, p.numel()) for n, p in model.named_parameters()]


def _sum_under(sizes: dict[str, int], prefix: str) -> int:
    dotted = prefix + "."
    return sum(v for k, v in sizes.items() if k == prefix or k.startswith(dotted))


_EMBED_WORDS = ("emb", "wte", "wpe", "rotary", "pos")


def _split_outer(model, prefix: str) -> tuple[list[str], list[str]]:
    """Modules outside the layers, split into those that run before them and those after.

    Walk the containers on the path to the layer list: a sibling registered before the path
    runs before the layers; one registered after runs after, unless it is an embedding or a
    position table (Llama registers rotary_emb after norm). Direct tensors of a container go
    first. Modules without any tensor (dropout) are left out; a tied lm_head stays in.
    """
    embed: list[str] = []
    head: list[str] = []
    parts = prefix.split(".")
    container = model
    for depth, step in enumerate(parts):
        base = ".".join(parts[:depth])
        before = True
        for tname, _ in list(container.named_parameters(recurse=False)) + list(container.named_buffers(recurse=False)):
            embed.append(f"{base}.{tname}" if base else tname)
        for child_name, child in container.named_children():
            full = f"{base}.{child_name}" if base else child_name
            if child_name == step:
                before = False
                continue
            has_tensors = any(True for _ in child.named_parameters(remove_duplicate=False)) or any(True for _ in child.buffers())
            if not has_tensors:
                continue
            if before or any(w in child_name.lower() for w in _EMBED_WORDS):
                embed.append(full)
            else:
                head.append(full)
        container = getattr(container, step)
    # Head modules of outer containers run after those of inner ones (lm_head after norm).
    return embed, _inner_first(head)


def _inner_first(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: -n.count("."))


def kv_heads_of(cfg, heads: int) -> int:
    kv = getattr(cfg, "num_key_value_heads", None)
    if kv:
        return int(kv)
    if getattr(cfg, "multi_query", False):
        return 1
    return heads


def _matmul_params(model) -> int:
    """Weights of every Linear (and GPT-2's Conv1D), the lm_head included even when tied."""
    import torch

    total = 0
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            total += module.weight.numel()
    return total


def _embedding_tied(model) -> bool:
    try:
        out, inp = model.get_output_embeddings(), model.get_input_embeddings()
        return out is not None and out.weight is inp.weight
    except (AttributeError, NotImplementedError):
        return False


def max_context_of(cfg) -> int:
    """Tokens of context the model accepts, from its config (a dict for ChatGLM2)."""
    for key in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        value = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
        if value:
            return int(value)
    return 2048


