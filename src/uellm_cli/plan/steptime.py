"""Seconds of one continuous-batching engine step (vLLM), from what the step holds.

A step is one forward over every token scheduled in it: `prefill_tokens` prompt tokens of rows
still prefilling (chunks), and one token for each of `decode_rows` rows that are generating.
What it costs beyond the tokens is attention: each decode row reads its whole context
(`decode_context` = the sum of those contexts), and a prefill chunk of c tokens that starts at
position s attends over s + 1 ... s + c, c * (2s + c) / 2 in all (`prefill_attention` = the sum
of c * (2s + c) over the chunks). `sampled_rows` rows run the lm_head (decode rows, and
prefill chunks that finish their prompt).

From a Calibration (the whole model on one device, profile/calibration.py) a step costs
    d0 + d1 * decode_rows + d2 * decode_context + p1 * prefill_tokens + p2 * prefill_attention
(p0 instead of d0 for a prefill-only step): the calibration's decode and prefill forms, added,
with one forward's overhead. From the roofline, each decoder layer costs
max(FLOPs / (flops * compute_eff), bytes / (bandwidth * bandwidth_eff)) + layer_overhead_s,
with its weights read once for the whole step (and the KV once per decode row, once per tile of
ATTENTION_TILE prompt tokens of a prefill chunk), and the stage with the lm_head adds the head
and step_overhead_s, as in costmodel.py. Hops between stages move every token's hidden state;
a tensor-parallel stage computes at its group's rate and pays its all-reduces per token and
per forward (CostModel.tp_coef).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from uellm_cli.jobs.results import StepRecord
from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.types import Replica

StepTimer = Callable[[int, float, int, float, int], float]
ATTENTION_TILE = 128  # queries of a prefill chunk that share one read of the KV (flash attention)


def step_timer(cost: CostModel, replica: Replica) -> StepTimer:
    """`(prefill_tokens, prefill_attention, decode_rows, decode_context, sampled_rows) -> s`
    for one replica: the simulator's inner loop, so every constant is folded in once."""
    stages, hops = cost.stages(replica)
    hop_latency_s = sum(cost.cluster.link(a, z).latency for a, z in hops)
    hop_s_per_token = sum(cost.act / cost.cluster.link(a, z).bandwidth for a, z in hops)
    roof, cals = [], []
    for s in stages:
        c = s.dev
        if c.cal is not None:
            p0, p1, p2 = c.cal.prefill
            d0, d1, d2 = c.cal.decode
            cals.append((s.share, p0, d0, p1, p2, d1, d2))
            continue
        per_flop, per_byte = 1.0 / c.fe, 1.0 / c.be
        roof.append((
            s.k, cost.layer_flops * per_flop, cost.layer_attn * per_flop,
            cost.model.layer_bytes * per_byte, cost.kv_layer * per_byte,
            (cost.act * per_byte if s.embed else 0.0) + s.comm_s_per_token,
            cost.head_flops * per_flop if s.head else 0.0,
            cost.head_read_bytes * per_byte if s.head else 0.0,
            s.k * c.layer_overhead_s + (c.step_overhead_s if s.head else 0.0) + s.comm_s_per_pass,
        ))
    roof_t, cals_t, scale = tuple(roof), tuple(cals), cost.time_scale

    def fn(prefill_tokens: int, prefill_attention: float, decode_rows: int,
           decode_context: float, sampled_rows: int) -> float:
        tokens = prefill_tokens + decode_rows
        attended = decode_context + 0.5 * prefill_attention
        # KV read: a decode row reads its whole context; a prefill chunk reads it once per tile
        # of ATTENTION_TILE queries (flash attention), not once per query
        kv_tokens = decode_context + 0.5 * prefill_attention / ATTENTION_TILE + tokens
        t = hop_latency_s + hop_s_per_token * tokens if hops else 0.0
        for (layers, layer_flop_s, attn_flop_s, weight_read_s, kv_read_s, token_s, head_flop_s,
             head_read_s, overhead_s) in roof_t:
            compute = tokens * layer_flop_s + attended * attn_flop_s
            memory = weight_read_s + kv_tokens * kv_read_s
            head = sampled_rows * head_flop_s
            if head < head_read_s:
                head = head_read_s
            t += layers * (compute if compute > memory else memory) + overhead_s + token_s * tokens
            if sampled_rows:
                t += head
        for share, p0, d0, p1, p2, d1, d2 in cals_t:  # Calibration.step_s, folded
            t += share * ((d0 if decode_rows else p0) + d1 * decode_rows + d2 * decode_context
                          + p1 * prefill_tokens + p2 * prefill_attention)
        return t * scale

    return fn


def measured_over_modelled(steps: Sequence[StepRecord], timer: StepTimer) -> float | None:
    """How much slower (above 1) or faster the engine ran `steps` than `timer` says steps of
    their contents take: the speed of the machine now against its calibration, free of the
    scheduler's choices (which rows ran when), which a row's or a group's duration is not."""
    modelled = sum(timer(s.prefill_tokens, s.prefill_attention, s.decode_rows, s.decode_context,
                         s.sampled_rows) for s in steps)
    measured = sum(s.seconds + s.gap_s for s in steps)  # the host's gaps: see fit_steps
    return measured / modelled if modelled > 0 and measured > 0 else None
