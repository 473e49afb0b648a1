"""`uellm plan`'s tables: a continuous-batching plan shows its scheduler limits, not batches."""

from __future__ import annotations

from plan_builders import cluster, gpu, llama_like, query
from rich.console import Console

from uellm_cli.plan.planner import make_plan
from uellm_cli.report.plan_view import render_plan


def _text(parts) -> str:
    console = Console(width=200, record=True)
    for part in parts:
        console.print(part)
    return console.export_text()


def test_a_stream_plan_shows_its_limits_and_a_batch_plan_its_batches():
    model = llama_like(layers=8, hidden=1024, heads=8, kv_heads=8, inter=2816)
    rows = [query(i, prompt=200, pred=100, deadline=30.0 + i) for i in range(20)]
    queries = {q.index: q for q in rows}
    gpus = cluster([gpu(0, mem_gb=24)])
    stream = _text(render_plan(make_plan(rows, model, gpus, engine="vllm"), model, gpus, queries))
    batched = _text(render_plan(make_plan(rows, model, gpus, engine="hf"), model, gpus, queries))
    assert "Continuous batching" in stream and "Batch timeline" not in stream
    assert "max seqs" in stream and "x 16" in stream  # GPU blocks of 16 tokens
    assert "Batch timeline" in batched and "Continuous batching" not in batched


def test_a_stream_plan_shows_the_deadlines_expected_over_drawn_lengths():
    model = llama_like(layers=8, hidden=1024, heads=8, kv_heads=8, inter=2816)
    rows = [query(i, prompt=200, pred=60, upper=240, max_new=512, deadline=0.2 + 0.005 * i)
            for i in range(100)]
    gpus = cluster([gpu(0, mem_gb=24)])
    plan = make_plan(rows, model, gpus, engine="vllm")
    text = " ".join(_text(render_plan(plan, model, gpus, {q.index: q for q in rows})).split())
    expected = f"{100 * plan.summary['expected_slo_attainment']:.1f}% expected"
    assert expected in text and "draws of the rows' lengths" in text
    assert "expected (" not in " ".join(_text(render_plan(make_plan(rows, model, gpus, engine="hf"),
                                                          model, gpus, {q.index: q for q in rows})).split())
