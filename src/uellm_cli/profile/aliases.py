"""Built-in model aliases: architecture configs as plain data (the numbers of each model's
config.json on the Hugging Face Hub), so `uellm plan --model llama-2-70b` needs no download.

Each entry: `model_type` (a transformers architecture), `dtype` (the published checkpoint's),
`repo` (where the numbers come from) and the config fields. ChatGLM2-6B is not a transformers
built-in: it is stored with its own field names (`model_type: chatglm`) and profiled through an
equivalent Qwen2 config (see model.chatglm_equivalent and docs/profiler.md).
"""

from __future__ import annotations

from pathlib import Path

from uellm_cli.config import DEFAULT_MODEL
from uellm_cli.paths import cache_dir

ALIASES: dict[str, dict] = {
    # huggyllama/llama-7b (LLaMA 1)
    "llama-7b": {
        "model_type": "llama", "dtype": "float16", "repo": "huggyllama/llama-7b",
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    },
    # meta-llama/Llama-2-7b-hf
    "llama-2-7b": {
        "model_type": "llama", "dtype": "float16", "repo": "meta-llama/Llama-2-7b-hf",
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    },
    # meta-llama/Llama-2-13b-hf
    "llama-2-13b": {
        "model_type": "llama", "dtype": "float16", "repo": "meta-llama/Llama-2-13b-hf",
        "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
        "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    },
    # meta-llama/Llama-2-70b-hf (grouped-query attention: 8 KV heads)
    "llama-2-70b": {
        "model_type": "llama", "dtype": "float16", "repo": "meta-llama/Llama-2-70b-hf",
        "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    },
    # meta-llama/Llama-3.1-8B (GQA: 8 KV heads, 128k context)
    "llama-3.1-8b": {
        "model_type": "llama", "dtype": "bfloat16", "repo": "meta-llama/Llama-3.1-8B",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
    # meta-llama/Llama-3.1-70B (GQA: 8 KV heads, 128k context)
    "llama-3.1-70b": {
        "model_type": "llama", "dtype": "bfloat16", "repo": "meta-llama/Llama-3.1-70B",
        "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
    # mistralai/Mistral-7B-v0.1 (GQA, 4096-token sliding window)
    "mistral-7b": {
        "model_type": "mistral", "dtype": "bfloat16", "repo": "mistralai/Mistral-7B-v0.1",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
        "max_position_embeddings": 32768, "sliding_window": 4096, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
    # Qwen/Qwen2.5-7B-Instruct (GQA, q/k/v biases)
    "qwen2.5-7b": {
        "model_type": "qwen2", "dtype": "bfloat16", "repo": "Qwen/Qwen2.5-7B-Instruct",
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "use_sliding_window": False,
    },
    # THUDM/chatglm2-6b: the model UELLM serves. Its own field names (multi-query attention
    # with 2 groups, fused qkv with bias, SwiGLU MLP, separate output layer).
    "chatglm2-6b": {
        "model_type": "chatglm", "dtype": "float16", "repo": "THUDM/chatglm2-6b",
        "num_layers": 28, "hidden_size": 4096, "ffn_hidden_size": 13696, "kv_channels": 128,
        "num_attention_heads": 32, "multi_query_attention": True, "multi_query_group_num": 2,
        "padded_vocab_size": 65024, "seq_length": 32768, "add_qkv_bias": True,
        "add_bias_linear": False, "rmsnorm": True, "post_layer_norm": True,
        "layernorm_epsilon": 1e-5,
    },
    # HuggingFaceTB/SmolLM2-135M-Instruct: uellm's default model (GQA, tied embeddings)
    DEFAULT_MODEL: {
        "model_type": "llama", "dtype": "bfloat16", "repo": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        "rope_theta": 100000.0,
    },
}

# Other spellings people type.
ALIAS_SYNONYMS: dict[str, str] = {
    "llama1-7b": "llama-7b",
    "llama2-13b": "llama-2-13b",
    "llama2-70b": "llama-2-70b",
    "mistral-7b-v0.1": "mistral-7b",
    "qwen2.5-7b-instruct": "qwen2.5-7b",
    "chatglm2": "chatglm2-6b",
    "llama2-7b": "llama-2-7b",
    "llama3.1-8b": "llama-3.1-8b",
    "llama3.1-70b": "llama-3.1-70b",
    "smollm2": DEFAULT_MODEL,
    "smollm2-135m-instruct": DEFAULT_MODEL,
}


def canonical_alias(name: str) -> str | None:
    """The alias `name` refers to (case-insensitive), or None."""
    key = name.strip().lower()
    if key in ALIASES:
        return key
    return ALIAS_SYNONYMS.get(key)


def alias_config(name: str) -> dict | None:
    """A copy of the alias's config data (with model_type, dtype, repo), or None."""
    key = canonical_alias(name)
    return dict(ALIASES[key]) if key else None


def alias_names() -> list[str]:
    return list(ALIASES)


def alias_of_folder(folder: Path) -> str | None:
    """The alias whose folder this is (`<cache>/models/smollm2-135m-converted`, or
    `<cache>/models/llama-7b`), so a plan or a run given the folder's path finds the alias's
    calibrations and length predictor, and the other way round; None for any other folder."""
    try:
        folder = folder.resolve()  # a link to the folder, or a relative path, names the same
        if folder.parent != (cache_dir() / "models").resolve():
            return None
    except OSError:
        return None
    name = folder.name.removesuffix("-converted")
    return name if name in ALIASES else None
