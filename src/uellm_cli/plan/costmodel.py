"""Time and memory of a static batch on a placement: the one model the planner and forecast share.

Time (seconds) per stage of a replica, from either source:
- roofline, per decoder layer: max(FLOPs / (flops * compute_eff), bytes / (bandwidth * bw_eff))
  + layer_overhead_s. Decoder layers are uniform, so a stage of k layers costs k times one layer
  (summing per-layer maxima is exact for uniform layers and keeps the deployer's DP linear).
  The head (final norm + lm_head matmul) and the embedding lookup are roofline terms of their
  own, and the stage holding the lm_head pays `step_overhead_s` once per forward (sampling,
  logits processing, the generate loop).
- calibration: when the device's name has a Calibration measured with this model, the stage
  costs calibrated_time * (its layers / all layers): the measured whole-model time is spread
  evenly over the layers (embedding, head and loop overhead included in that share). A
  one-device replica therefore costs exactly the calibrated time.
Between consecutive stages, each forward moves the hidden states: link latency + bytes /
bandwidth. With tied embeddings the lm_head sits with the embeddings on the first stage (the
weight is one tensor), so a multi-stage replica also sends the last hidden state back.

A static batch (HF `generate`): one prefill of `batch` rows padded to the longest prompt (the
head only runs on the last position), then `new_tokens - 1` decode steps whose context grows
by one each step. `batch_time_s` sums those steps in closed form: each roofline layer term is
the max of two lines in the context, summed piecewise around their crossing.

Memory: KV = batch * tokens * kv_bytes_per_token (exact for MHA, GQA, MQA), plus activations
of the prefill = batch * prompt * activation_bytes_per_token * activation_factor (a few hidden-
sized temporaries, the MLP intermediate) + the float32 logits of the last position.

No torch here: it runs on the planner's hot path and in `uellm plan` on any laptop.
Longer than our ~400-line rule on purpose: roofline, calibration, tensor-parallel all-reduce
and memory are one formula the planner and forecast share; split, its parts would drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise

from uellm_cli.plan.types import Replica
from uellm_cli.profile.calibration import Calibration, same_model
from uellm_cli.profile.catalogue import INFLIGHT_BATCHING_EFFICIENCY
from uellm_cli.profile.devices import Cluster, Device
from uellm_cli.profile.model_profile import ModelProfile


@dataclass(slots=True, frozen=True)
class RooflineParams:
    """Efficiency and overheads of the roofline. Defaults are deliberately round: measured
    Calibrations replace them where they exist."""

    compute_eff: float = 0.5  # share of peak FLOP/s a HF eager forward reaches
    bandwidth_eff: float = 0.7  # share of peak memory bandwidth
    layer_overhead_s: float = 5e-5  # kernel launches and Python per layer per forward
    step_overhead_s: float = 2e-3  # per forward: generate loop, logits processors, sampling
    activation_factor: float = 8.0  # transient hidden-sized buffers per prompt token
    comm_eff: float = 1.0  # share of a link's bandwidth (and latency) a tensor-parallel all-reduce reaches



@dataclass(slots=True, frozen=True)
class Roofline:
    """An engine's roofline on each kind of device: GPUs and CPUs reach very different shares
    of their peaks, and engines differ in overhead. `gpu_efficiency`: (compute_eff,
    bandwidth_eff) measured for particular GPUs (catalogue names), which replace the GPU
    default's on those."""

    gpu: RooflineParams = RooflineParams()
    cpu: RooflineParams = RooflineParams()
    gpu_efficiency: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def on(self, kind: str, name: str | None = None) -> RooflineParams:
        if kind == "cpu":
            return self.cpu
        measured = self.gpu_efficiency.get(name or "")
        if measured is None:
            return self.gpu
        return replace(self.gpu, compute_eff=measured[0], bandwidth_eff=measured[1])


# CPU rooflines fitted here to each engine's calibration of smollm2-135m (float32, 2 threads,
# AMD EPYC; the CPU's peak is cpu_bench's measured matmul and copy): the log-error least
# squares over decode steps of 1-64 rows at 32-512 tokens of context and prefills of 1-4 rows
# of 32-512 tokens (docs/engines.md, "Cost model per engine"). HF eager spends its time in
# per-layer overhead and attention it does not fuse; vLLM's kernels beat the measured matmul
# (efficiencies above 1). vLLM on GPUs: fitted to published runs (bench/published_runs.py);
# hf on GPUs keeps the round defaults.
ENGINE_ROOFLINES: dict[str, Roofline] = {
    "hf": Roofline(cpu=RooflineParams(compute_eff=0.5, bandwidth_eff=0.3, layer_overhead_s=3e-4,
                                      step_overhead_s=3e-3)),
    "vllm": Roofline(
        # GPUs: the fit to published in-flight-batching runs (profile/catalogue.py); GPUs not
        # measured there take round shares between the measured ones
        gpu=RooflineParams(compute_eff=0.7, bandwidth_eff=0.65, layer_overhead_s=1e-5,
                           step_overhead_s=1e-3, comm_eff=0.5),
        cpu=RooflineParams(compute_eff=1.4, bandwidth_eff=2.0, layer_overhead_s=1e-4,
                           step_overhead_s=1e-2),
        gpu_efficiency=INFLIGHT_BATCHING_EFFICIENCY),
}


@dataclass(slots=True, frozen=True)
class DevCoef:
    """Per-device constants of one decoder layer / the head / the embedding, or a Calibration."""

    fe: float  # effective FLOP/s
    be: float  # effective bytes/s
    cal: Calibration | None
    layer_overhead_s: float = 0.0
    step_overhead_s: float = 0.0


@dataclass(slots=True, frozen=True)
class StageCoef:
    dev: DevCoef  # a tensor-parallel group: one device with the group's FLOP/s and bandwidth
    k: int  # decoder layers
    share: float  # k / num_layers (calibrated stages)
    embed: bool
    head: bool  # holds the lm_head matmul (first stage when tied)
    comm_s_per_token: float = 0.0  # tensor parallelism: the stage's all-reduces, per token
    comm_s_per_pass: float = 0.0  # ... and their latency, per forward


def _sum_line(p: float, q: float, c0: int, c1: int) -> float:
    """sum_{c=c0}^{c1} (p + q c)."""
    if c1 < c0:
        return 0.0
    n = c1 - c0 + 1
    return n * p + q * (c0 + c1) * n / 2.0


def _sum_max_lines(a: float, b: float, g: float, d: float, c0: int, c1: int) -> float:
    """sum_{c=c0}^{c1} max(a + b c, g + d c), in O(1)."""
    if c1 < c0:
        return 0.0
    if b == d:
        return _sum_line(max(a, g), b, c0, c1)
    x = (g - a) / (b - d)  # the lines cross at c = x; above it the steeper one wins
    steep, flat = ((a, b), (g, d)) if b > d else ((g, d), (a, b))
    if x < c0:
        return _sum_line(steep[0], steep[1], c0, c1)
    if x >= c1:
        return _sum_line(flat[0], flat[1], c0, c1)
    cut = int(x)  # c <= cut: flat line is >= steep one
    return _sum_line(flat[0], flat[1], c0, cut) + _sum_line(steep[0], steep[1], cut + 1, c1)


class CostModel:
    """Time and memory of batches on replicas of `model` over `cluster`.

    calibrations: Device.name -> Calibration (from `uellm profile --calibrate`); one applies only
    when it was measured with this model (names compared loosely: case, folder basename).
    """

    def __init__(
        self,
        model: ModelProfile,
        cluster: Cluster,
        calibrations: dict[str, Calibration] | None = None,
        params: RooflineParams | Roofline | None = None,
        time_scale: float = 1.0,
    ):
        """params: the roofline (one for every device, or a Roofline by device kind).
        time_scale multiplies every time: the executor measures how much slower (or faster)
        the real batches run than forecast and replans with that factor."""
        self.time_scale = time_scale
        self.model = model
        self.cluster = cluster
        self.calibrations = dict(calibrations or {})
        if not isinstance(params, Roofline):
            params = Roofline(params or RooflineParams(), params or RooflineParams())
        self.roofline = params
        self.params = params.gpu  # what does not depend on the device (activation_factor)
        m = model
        self.L = max(1, m.num_layers)
        self.head_flops = float(min(2.0 * m.vocab_size * m.hidden_size, m.flops_per_token))
        self.layer_flops = max(0.0, m.flops_per_token - self.head_flops) / self.L
        self.layer_attn = m.attn_flops_per_token_per_ctx / self.L
        self.head_read_bytes = float(m.vocab_size * m.hidden_size * m.dtype_bytes)
        self.kv_layer = m.kv_bytes_per_token / self.L
        self.act = float(m.activation_bytes_per_token)
        self._dev: dict[str, DevCoef] = {}
        self._ignored: dict[str, str] = {}
        for dev in cluster.devices:
            self._dev[dev.id] = self._coef(dev)
        self._timers: dict[tuple, Callable[[int, int, int], float]] = {}

    # ------------------------------------------------------------------ per device

    def _coef(self, dev: Device) -> DevCoef:
        p = self.roofline.on(dev.kind, dev.name)
        cal = self.calibrations.get(dev.name)
        if cal is not None and not same_model(cal.model, self.model.name):
            self._ignored[dev.id] = f"calibration of {dev.name} was measured with {cal.model}"
            cal = None
        fe = max(dev.flops, 1.0) * p.compute_eff
        be = max(dev.mem_bandwidth, 1.0) * p.bandwidth_eff
        return DevCoef(fe, be, cal, p.layer_overhead_s, p.step_overhead_s)

    def tp_coef(self, group: Sequence[str]) -> tuple[DevCoef, float, float]:
        """A tensor-parallel group as one device, and the cost of its all-reduces per decoder
        layer: (coefficients, seconds per token, seconds per forward). Each layer's matmuls,
        weights and KV heads are split over the t devices, so the group computes and reads
        at t times one device's effective rate (a one-device calibration does not apply: the
        roofline does); each layer then all-reduces the hidden state twice (after attention
        and after the MLP), a ring moving 2(t-1)/t of it over the group's slowest link, with
        2(t-1) link latencies, at the roofline's comm_eff of the link."""
        t = len(group)
        coefs = [self.device_coef(d) for d in group]
        devices = [self.cluster.device(d) for d in group]
        p = self.roofline.on(devices[0].kind, devices[0].name)
        fe = min(max(d.flops, 1.0) for d in devices) * p.compute_eff * t
        be = min(max(d.mem_bandwidth, 1.0) for d in devices) * p.bandwidth_eff * t
        link = min((self.cluster.link(a, z) for a, z in pairwise(group)), key=lambda lk: lk.bandwidth)
        per_token = 2 * (2 * (t - 1) / t) * self.act / (link.bandwidth * p.comm_eff)
        per_pass = 2 * 2 * (t - 1) * link.latency / p.comm_eff
        return (DevCoef(fe, be, None, coefs[0].layer_overhead_s, coefs[0].step_overhead_s),
                per_token, per_pass)

    def device_coef(self, device_id: str) -> DevCoef:
        if device_id not in self._dev:
            self._dev[device_id] = self._coef(self.cluster.device(device_id))
        return self._dev[device_id]

    def is_calibrated(self, device_id: str) -> bool:
        return self.device_coef(device_id).cal is not None

    def layer_decode_s(self, device_id: str, batch: int, context: int) -> float:
        """One decoder layer, one decode step (roofline), or the calibrated per-layer share."""
        c = self.device_coef(device_id)
        if c.cal is not None:
            return c.cal.decode_s(batch, context) / self.L
        comp = batch * (self.layer_flops + self.layer_attn * context) / c.fe
        mem = (self.model.layer_bytes + batch * context * self.kv_layer) / c.be
        return max(comp, mem) + c.layer_overhead_s

    def head_decode_s(self, device_id: str, batch: int) -> float:
        """Final norm + lm_head for one decode step, plus the per-forward loop overhead."""
        c = self.device_coef(device_id)
        if c.cal is not None:
            return 0.0
        return max(batch * self.head_flops / c.fe, self.head_read_bytes / c.be) + c.step_overhead_s

    def embed_decode_s(self, device_id: str, batch: int) -> float:
        c = self.device_coef(device_id)
        if c.cal is not None:
            return 0.0
        return batch * self.act / c.be

    def hop_s(self, a: str, b: str, batch: int, tokens: int = 1) -> float:
        """Moving `batch * tokens` hidden states from device a to device b."""
        if a == b:
            return 0.0
        link = self.cluster.link(a, b)
        return link.latency + batch * tokens * self.act / link.bandwidth

    # ------------------------------------------------------------------ per replica

    def stages(self, replica: Replica) -> tuple[list[StageCoef], list[tuple[str, str]]]:
        """The replica's stages with their devices' constants, and the hops between them."""
        st = replica.stages
        tied = self.model.tied_embeddings and len(st) > 1
        out = []
        for i, s in enumerate(st):
            holds_head = (i == 0) if tied else s.has_head
            coef, per_token, per_pass = self.device_coef(s.device), 0.0, 0.0
            if s.tp > 1:
                coef, per_token, per_pass = self.tp_coef(s.tp_group)
            out.append(StageCoef(coef, s.num_layers, s.num_layers / self.L, s.has_embed, holds_head,
                                 s.num_layers * per_token, s.num_layers * per_pass))
        hops = [(st[i].device, st[i + 1].device) for i in range(len(st) - 1)]
        if tied:
            hops.append((st[-1].device, st[0].device))
        return out, hops

    def prefill_s(self, replica: Replica, batch: int, prompt_tokens: int) -> float:
        """The prefill forward of `batch` rows left-padded to `prompt_tokens`."""
        stages, hops = self.stages(replica)
        return self._prefill(stages, hops, batch, prompt_tokens) * self.time_scale

    def _prefill(self, stages, hops, b: int, n: int) -> float:
        t = 0.0
        for s in stages:
            c = s.dev
            if c.cal is not None:
                t += c.cal.prefill_s(b, n) * s.share
                continue
            comp = b * (n * self.layer_flops + self.layer_attn * n * (n + 1) / 2.0) / c.fe
            mem = (self.model.layer_bytes + b * n * (self.kv_layer + 2 * self.act)) / c.be
            t += s.k * (max(comp, mem) + c.layer_overhead_s) + s.comm_s_per_pass + b * n * s.comm_s_per_token
            if s.embed:
                t += b * n * self.act / c.be
            if s.head:
                t += max(b * self.head_flops / c.fe, self.head_read_bytes / c.be) + c.step_overhead_s
        for a, z in hops:
            t += self.hop_s(a, z, b, n)
        return t

    def decode_step_s(self, replica: Replica, batch: int, context: int) -> float:
        """One decode step of `batch` rows attending to `context` tokens each."""
        stages, hops = self.stages(replica)
        return self._decode_sum(stages, hops, batch, context, context) * self.time_scale

    def _decode_sum(self, stages, hops, b: int, c0: int, c1: int) -> float:
        """Sum of decode steps over contexts c0..c1 (inclusive), closed form."""
        if c1 < c0:
            return 0.0
        steps = c1 - c0 + 1
        t = 0.0
        for s in stages:
            c = s.dev
            if c.cal is not None:
                d0, d1, d2 = c.cal.decode
                t += _sum_line(d0 + d1 * b, d2 * b, c0, c1) * s.share
                continue
            a = b * self.layer_flops / c.fe
            bb = b * self.layer_attn / c.fe
            g = self.model.layer_bytes / c.be
            d = b * self.kv_layer / c.be
            t += s.k * (_sum_max_lines(a, bb, g, d, c0, c1) + steps * c.layer_overhead_s)
            t += steps * (s.comm_s_per_pass + b * s.comm_s_per_token)
            if s.embed:
                t += steps * b * self.act / c.be
            if s.head:
                t += steps * (max(b * self.head_flops / c.fe, self.head_read_bytes / c.be) + c.step_overhead_s)
        for a_dev, z_dev in hops:
            t += steps * self.hop_s(a_dev, z_dev, b, 1)
        return t

    def batch_time_s(self, replica: Replica, batch: int, prompt_tokens: int, new_tokens: int) -> float:
        """Prefill + decode steps for new_tokens - 1 more tokens (context prompt+1 .. prompt+new-1)."""
        return self.batch_timer(replica)(batch, prompt_tokens, new_tokens)

    def batch_timer(self, replica: Replica) -> Callable[[int, int, int], float]:
        """A fast `(batch, prompt_tokens, new_tokens) -> seconds` for one replica (hot path):
        the same sums as prefill_s + decode steps, with every constant folded in once."""
        stages, hops = self.stages(replica)
        # Keyed by what the time depends on, so replicas on identical hardware share one timer.
        key = (tuple((s.dev.fe, s.dev.be, id(s.dev.cal), s.dev.layer_overhead_s, s.dev.step_overhead_s,
                      s.k, s.embed, s.head) for s in stages),
               tuple((self.cluster.link(a, z).latency, self.cluster.link(a, z).bandwidth) for a, z in hops))
        fn = self._timers.get(key)
        if fn is None:
            fn = self._compile(stages, hops)
            if self.time_scale != 1.0:
                raw, k = fn, self.time_scale

                def fn(b: int, n: int, m: int) -> float:
                    return raw(b, n, m) * k

            self._timers[key] = fn
        return fn

    def _compile(self, stages: list[StageCoef], hops: list[tuple[str, str]]) -> Callable[[int, int, int], float]:
        roof, cals = [], []
        for s in stages:
            c = s.dev
            if c.cal is not None:
                cals.append((s.share, *c.cal.prefill, *c.cal.decode))
                continue
            per_flop, per_byte = 1.0 / c.fe, 1.0 / c.be
            roof.append((  # _roofline_stage_timer's arguments, in order
                s.k, self.layer_flops * per_flop, self.layer_attn * per_flop,
                self.model.layer_bytes * per_byte, self.kv_layer * per_byte,
                (self.kv_layer + 2 * self.act) * per_byte,
                (self.act * per_byte if s.embed else 0.0) + s.comm_s_per_token,
                self.head_flops * per_flop if s.head else 0.0,
                self.head_read_bytes * per_byte if s.head else 0.0,
                s.k * c.layer_overhead_s + (c.step_overhead_s if s.head else 0.0) + s.comm_s_per_pass,
            ))
        hop_latency_s = sum(self.cluster.link(a, z).latency for a, z in hops)
        hop_s_per_token = sum(self.act / self.cluster.link(a, z).bandwidth for a, z in hops)
        stage_timers = tuple(_roofline_stage_timer(*coefs) for coefs in roof)
        calibrated = tuple(cals)
        if len(stage_timers) == 1 and not calibrated and not hops:
            return stage_timers[0]

        def fn(batch: int, prompt: int, new: int) -> float:
            steps = new - 1 if new > 1 else 0
            t = hop_latency_s * (1 + steps) + batch * hop_s_per_token * (prompt + steps)
            for stage_time in stage_timers:
                t += stage_time(batch, prompt, new)
            if calibrated:
                first_ctx, last_ctx = prompt + 1, prompt + steps
                for share, p0, p1, p2, d0, d1, d2 in calibrated:
                    t += share * (p0 + p1 * batch * prompt + p2 * batch * prompt * prompt)
                    if steps:
                        t += share * (steps * (d0 + d1 * batch)
                                      + d2 * batch * (first_ctx + last_ctx) * steps * 0.5)
            return t

        return fn

    # ------------------------------------------------------------------ memory

    def kv_bytes(self, batch: int, tokens: int) -> int:
        """K and V of all layers for `batch` rows of `tokens` tokens."""
        return int(batch * tokens * self.model.kv_bytes_per_token)

    def activation_bytes(self, batch: int, prompt_tokens: int) -> int:
        """Peak transient memory of the prefill (hidden-sized buffers + float32 last logits)."""
        m = self.model
        return int(batch * prompt_tokens * self.act * self.params.activation_factor + batch * m.vocab_size * 4)

    def batch_memory_bytes(self, batch: int, prompt_tokens: int, new_tokens: int) -> int:
        """KV of the whole static batch at its longest + prefill activations."""
        return self.kv_bytes(batch, prompt_tokens + new_tokens) + self.activation_bytes(batch, prompt_tokens)

    # ------------------------------------------------------------------ report

    def describe(self) -> dict:
        """Which source each device's times come from, and the roofline parameters."""
        devices = []
        for dev in self.cluster.devices:
            c = self.device_coef(dev.id)
            entry = {"device": dev.id, "name": dev.name,
                     "source": "calibration" if c.cal is not None else "roofline"}
            if c.cal is not None:
                entry["calibration"] = {"engine": c.cal.engine, "model": c.cal.model,
                                        "measured_at": c.cal.measured_at, "fit_error": dict(c.cal.fit_error)}
            else:
                entry["roofline"] = asdict(self.roofline.on(dev.kind, dev.name))
            if dev.id in self._ignored:
                entry["note"] = self._ignored[dev.id]
            devices.append(entry)
        p = self.params
        return {
            "devices": devices,
            "roofline": {"compute_eff": p.compute_eff, "bandwidth_eff": p.bandwidth_eff,
                         "layer_overhead_s": p.layer_overhead_s, "step_overhead_s": p.step_overhead_s,
                         "activation_factor": p.activation_factor},
        }


def _roofline_stage_timer(layers, layer_flop_s, attn_flop_s, weight_read_s, kv_read_s,
                          prefill_bytes_s, token_s, head_flop_s, head_read_s,
                          overhead_s) -> Callable[[int, int, int], float]:
    """`(batch, prompt, new_tokens) -> seconds` of one roofline stage (CostModel._compile): the
    prefill, then the decode steps in closed form. Arguments are per-row (or per-token)
    seconds: `layer_flop_s` of a decoder layer's matmuls, `attn_flop_s` of attention per context
    token, `weight_read_s` of reading a layer's weights, `kv_read_s` of reading one token's KV,
    `prefill_bytes_s` of a prompt token's KV and activations, `token_s` of the embedding and
    the tensor-parallel all-reduces,
    `head_flop_s`/`head_read_s` of the lm_head; `overhead_s` per forward. This closure is the
    scheduler's inner loop, so the sums are inlined."""

    def fn(batch: int, prompt: int, new: int) -> float:
        steps = new - 1 if new > 1 else 0
        compute = batch * (prompt * layer_flop_s + attn_flop_s * prompt * (prompt + 1) * 0.5)
        memory = weight_read_s + batch * prompt * prefill_bytes_s
        head = batch * head_flop_s
        if head < head_read_s:
            head = head_read_s
        t = (layers * (compute if compute > memory else memory) + overhead_s
             + token_s * batch * prompt + head * (1 + steps))
        if not steps:
            return t
        first_ctx, last_ctx = prompt + 1, prompt + steps
        t += steps * (overhead_s + token_s * batch)
        # layers * sum over the decode contexts c of max(compute(c), memory(c)): two lines in c
        # (compute_at0 + compute_slope c, weight_read_s + memory_slope c), summed piecewise
        # around their crossing.
        compute_at0, compute_slope, memory_slope = batch * layer_flop_s, batch * attn_flop_s, batch * kv_read_s
        if compute_slope > memory_slope or (compute_slope == memory_slope and compute_at0 >= weight_read_s):
            steep_at0, steep_slope, flat_at0, flat_slope = compute_at0, compute_slope, weight_read_s, memory_slope
        else:
            steep_at0, steep_slope, flat_at0, flat_slope = weight_read_s, memory_slope, compute_at0, compute_slope
        cross = (flat_at0 - steep_at0) / (steep_slope - flat_slope) if steep_slope != flat_slope else -1.0
        if cross < first_ctx:
            return t + layers * (steps * steep_at0 + steep_slope * (first_ctx + last_ctx) * steps * 0.5)
        if cross >= last_ctx:
            return t + layers * (steps * flat_at0 + flat_slope * (first_ctx + last_ctx) * steps * 0.5)
        cut = int(cross)
        below, above = cut - first_ctx + 1, last_ctx - cut
        return t + layers * (below * flat_at0 + flat_slope * (first_ctx + cut) * below * 0.5
                             + above * steep_at0 + steep_slope * (cut + 1 + last_ctx) * above * 0.5)

    return fn
