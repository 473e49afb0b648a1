"""HELR and accelerate maps executed on a real (tiny) model. The only planner test that uses torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from plan_builders import GB, cluster, gpu, llama_like

from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.deployer import deploy
from uellm_cli.plan.replicas import MEM_FRACTION


def _profile_of(cfg, dtype_bytes=4):
    p = llama_like(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, heads=cfg.num_attention_heads,
                   kv_heads=cfg.num_key_value_heads, inter=cfg.intermediate_size, vocab=cfg.vocab_size,
                   dtype_bytes=dtype_bytes, tied=bool(cfg.tie_word_embeddings), name="tiny")
    import dataclasses

    return dataclasses.replace(p, dtype="float32", max_context=512)


def _tight_cluster(profile, n: int):
    """n devices, each holding ceil(layers / n) layers plus the embeddings or the head."""
    per = -(-profile.num_layers // n)
    mem = (per * profile.layer_bytes + max(profile.embed_bytes, profile.head_bytes)) / MEM_FRACTION * 1.001
    return cluster([gpu(i, mem_gb=mem / GB) for i in range(n)])


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(("fixture", "n"), [("tiny_llama", 2), ("tiny_llama", 4), ("tiny_qwen2", 2), ("tiny_qwen2", 3)])
def test_helr_map_executes_and_matches_the_unplaced_model(fixture, n, request):
    import torch
    from accelerate import dispatch_model
    from accelerate.utils import check_device_map
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue(fixture)
    ref = AutoModelForCausalLM.from_pretrained(path).eval()
    profile = _profile_of(ref.config)
    dep = deploy(profile, _tight_cluster(profile, n), objective="lr", replicas=1)
    (rep,) = dep.replicas
    assert len(rep.stages) == n  # the memory forces a real split
    placed = AutoModelForCausalLM.from_pretrained(path).eval()
    check_device_map(placed, rep.device_map)  # our module names are the model's
    if profile.tied_embeddings:
        assert rep.device_map["lm_head"] == rep.device_map["model.embed_tokens"]
    dispatch_model(placed, {k: "cpu" for k in rep.device_map}, force_hooks=True)
    ids = torch.randint(0, ref.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(placed, ids), _logits(ref, ids), rtol=0, atol=0)


def _tiny_meta(tied: bool):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=400, tie_word_embeddings=tied)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg), cfg


@pytest.mark.parametrize("tied", [False, True])
def test_accelerate_baselines_become_stages_the_cost_model_judges(tied):
    from uellm_cli.engine.accelerate_maps import accelerate_deployments

    meta, cfg = _tiny_meta(tied)
    profile = _profile_of(cfg)
    cl = cluster([gpu(i, mem_gb=0.6 * profile.weight_bytes / GB / MEM_FRACTION) for i in range(3)])
    deps = accelerate_deployments(meta, profile, cl)
    assert {d.strategy for d in deps} <= {"auto", "balanced", "sequential"} and deps
    cost = CostModel(profile, cl)
    ids = {d.id for d in cl.devices}
    for d in deps:
        (rep,) = d.replicas
        assert set(rep.device_map.values()) <= ids
        layers = [s for s in rep.stages if s.num_layers]
        assert layers[0].first_layer == 0 and layers[-1].last_layer == profile.num_layers
        assert all(a.last_layer == b.first_layer for a, b in zip(layers, layers[1:], strict=False))
        assert cost.batch_time_s(rep, 2, 50, 20) > 0


def test_a_model_too_big_for_the_devices_gives_no_accelerate_baseline():
    from uellm_cli.engine.accelerate_maps import accelerate_deployments

    meta, cfg = _tiny_meta(False)
    profile = _profile_of(cfg)
    cl = cluster([gpu(0, mem_gb=profile.layer_bytes / GB)])
    assert accelerate_deployments(meta, profile, cl) == []


def test_planner_modules_import_without_torch():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import uellm_cli.plan.types, uellm_cli.plan.scheduler, uellm_cli.plan.deployer
        import uellm_cli.plan.simulate, uellm_cli.plan.planner, uellm_cli.plan.costmodel
        import uellm_cli.engine.accelerate_maps, uellm_cli.commands.plan
        from uellm_cli.plan.planner import make_plan
        from uellm_cli.plan.types import Query
        from uellm_cli.profile.devices import Cluster, Device
        from uellm_cli.profile.model_profile import ModelProfile
        m = ModelProfile("m", "LlamaForCausalLM", "float16", 2, 4, 64, 4, 4, 16, 100, 512,
                         10**6, 10**5, 10**5, 4096, 1e7, 1e3, 128)
        cl = Cluster([Device("cuda:0", "g", "gpu", 10**9, 1e13, 1e11)])
        plan = make_plan([Query(i, str(i), 10, 20, 20, 20, 5.0) for i in range(10)], m, cl)
        assert plan.batches
        for heavy in ("transformers", "accelerate"):
            assert heavy not in sys.modules, heavy
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
