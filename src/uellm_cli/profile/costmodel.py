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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from uellm_cli.plan.types import Replica
from uellm_cli.profile.calibration import Calibration
from uellm_cli.profile.hardware import Cluster, Device
from uellm_cli.profile.model import ModelProfile


@dataclass(slots=True, frozen=True)
class RooflineParams:
    """Efficiency and overheads of the roofline. Defaults are deliberately round: measured
    Calibrations replace them where they exist."""

    compute_eff: float = 0.5  # share of peak FLOP/s a HF eager forward reaches
    bandwidth_eff: float = 0.7  # share of peak memory bandwidth
    layer_overhead_s: float = 5e-5  # kernel launches and Python per layer per forward
    step_overhead_s: float = 2e-3  # per forward: generate loop, logits processors, sampling
    activation_factor: float = 8.0  # transient hidden-sized buffers per prompt token


@dataclass(slots=True, frozen=True)
class _DevCoef:
    """Per-device constants of one decoder layer / the head / the embedding, or a Calibration."""

    fe: float  # effective FLOP/s
    be: float  # effective bytes/s
    cal: Calibration | None


@dataclass(slots=True, frozen=True)
class _StageCoef:
    dev: _DevCoef
    k: int  # decoder layers
    share: float  # k / num_layers (calibrated stages)
    embed: bool
    head: bool  # holds the lm_head matmul (first stage when tied)


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
        params: RooflineParams | None = None,
        time_scale: float = 1.0,
    ):
        """time_scale multiplies every time: the executor measures how much slower (or faster)
        the real batches run than forecast and replans with that factor."""
        self.time_scale = time_scale
        self.model = model
        self.cluster = cluster
        self.calibrations = dict(calibrations or {})
        self.params = params or RooflineParams()
        m = model
        self.L = max(1, m.num_layers)
        self.head_flops = float(min(2.0 * m.vocab_size * m.hidden_size, m.flops_per_token))
        self.layer_flops = max(0.0, m.flops_per_token - self.head_flops) / self.L
        self.layer_attn = m.attn_flops_per_token_per_ctx / self.L
        self.head_read_bytes = float(m.vocab_size * m.hidden_size * m.dtype_bytes)
        self.kv_layer = m.kv_bytes_per_token / self.L
        self.act = float(m.activation_bytes_per_token)
        self._dev: dict[str, _DevCoef] = {}
        self._ignored: dict[str, str] = {}
        for dev in cluster.devices:
            self._dev[dev.id] = self._coef(dev)
        self._timers: dict[tuple, Callable[[int, int, int], float]] = {}

    # ------------------------------------------------------------------ per device

    def _coef(self, dev: Device) -> _DevCoef:
        p = self.params
        cal = self.calibrations.get(dev.name)
        if cal is not None and not _same_model(cal.model, self.model.name):
            self._ignored[dev.id] = f"calibration of {dev.name} was measured with {cal.model}"
            cal = None
        fe = max(dev.flops, 1.0) * p.compute_eff
        be = max(dev.mem_bandwidth, 1.0) * p.bandwidth_eff
        return _DevCoef(fe, be, cal)

    def device_coef(self, device_id: str) -> _DevCoef:
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
        return max(comp, mem) + self.params.layer_overhead_s

    def head_decode_s(self, device_id: str, batch: int) -> float:
        """Final norm + lm_head for one decode step, plus the per-forward loop overhead."""
        c = self.device_coef(device_id)
        if c.cal is not None:
            return 0.0
        return max(batch * self.head_flops / c.fe, self.head_read_bytes / c.be) + self.params.step_overhead_s

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

    def _stages(self, replica: Replica) -> tuple[list[_StageCoef], list[tuple[str, str]]]:
        st = replica.stages
        tied = self.model.tied_embeddings and len(st) > 1
        out = []
        for i, s in enumerate(st):
            holds_head = (i == 0) if tied else s.has_head
            out.append(_StageCoef(self.device_coef(s.device), s.num_layers, s.num_layers / self.L,
                                  s.has_embed, holds_head))
        hops = [(st[i].device, st[i + 1].device) for i in range(len(st) - 1)]
        if tied:
            hops.append((st[-1].device, st[0].device))
        return out, hops

    def prefill_s(self, replica: Replica, batch: int, prompt_tokens: int) -> float:
        """The prefill forward of `batch` rows left-padded to `prompt_tokens`."""
        stages, hops = self._stages(replica)
        return self._prefill(stages, hops, batch, prompt_tokens) * self.time_scale

    def _prefill(self, stages, hops, b: int, n: int) -> float:
        p = self.params
        t = 0.0
        for s in stages:
            c = s.dev
            if c.cal is not None:
                t += c.cal.prefill_s(b, n) * s.share
                continue
            comp = b * (n * self.layer_flops + self.layer_attn * n * (n + 1) / 2.0) / c.fe
            mem = (self.model.layer_bytes + b * n * (self.kv_layer + 2 * self.act)) / c.be
            t += s.k * (max(comp, mem) + p.layer_overhead_s)
            if s.embed:
                t += b * n * self.act / c.be
            if s.head:
                t += max(b * self.head_flops / c.fe, self.head_read_bytes / c.be) + p.step_overhead_s
        for a, z in hops:
            t += self.hop_s(a, z, b, n)
        return t

    def decode_step_s(self, replica: Replica, batch: int, context: int) -> float:
        """One decode step of `batch` rows attending to `context` tokens each."""
        stages, hops = self._stages(replica)
        return self._decode_sum(stages, hops, batch, context, context) * self.time_scale

    def _decode_sum(self, stages, hops, b: int, c0: int, c1: int) -> float:
        """Sum of decode steps over contexts c0..c1 (inclusive), closed form."""
        if c1 < c0:
            return 0.0
        p = self.params
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
            t += s.k * (_sum_max_lines(a, bb, g, d, c0, c1) + steps * p.layer_overhead_s)
            if s.embed:
                t += steps * b * self.act / c.be
            if s.head:
                t += steps * (max(b * self.head_flops / c.fe, self.head_read_bytes / c.be) + p.step_overhead_s)
        for a_dev, z_dev in hops:
            t += steps * self.hop_s(a_dev, z_dev, b, 1)
        return t

    def batch_time_s(self, replica: Replica, batch: int, prompt_tokens: int, new_tokens: int) -> float:
        """Prefill + decode steps for new_tokens - 1 more tokens (context prompt+1 .. prompt+new-1)."""
        return self.batch_timer(replica)(batch, prompt_tokens, new_tokens)

    def batch_timer(self, replica: Replica) -> Callable[[int, int, int], float]:
        """A fast `(batch, prompt_tokens, new_tokens) -> seconds` for one replica (hot path):
        the same sums as prefill_s + decode steps, with every constant folded in once."""
        stages, hops = self._stages(replica)
        # Keyed by what the time depends on, so replicas on identical hardware share one timer.
        key = (tuple((s.dev.fe, s.dev.be, id(s.dev.cal), s.k, s.embed, s.head) for s in stages),
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

    def _compile(self, stages: list[_StageCoef], hops: list[tuple[str, str]]) -> Callable[[int, int, int], float]:
        p = self.params
        roof, cals = [], []
        for s in stages:
            c = s.dev
            if c.cal is not None:
                cals.append((s.share, *c.cal.prefill, *c.cal.decode))
                continue
            fe, be = 1.0 / c.fe, 1.0 / c.be
            roof.append((
                s.k, self.layer_flops * fe, self.layer_attn * fe, self.model.layer_bytes * be,
                self.kv_layer * be, (self.kv_layer + 2 * self.act) * be,
                self.act * be if s.embed else 0.0,
                self.head_flops * fe if s.head else 0.0, self.head_read_bytes * be if s.head else 0.0,
                s.k * p.layer_overhead_s + (p.step_overhead_s if s.head else 0.0),
            ))
        hop_lat = sum(self.cluster.link(a, z).latency for a, z in hops)
        hop_inv = sum(self.act / self.cluster.link(a, z).bandwidth for a, z in hops)
        roof_t, cals_t = tuple(roof), tuple(cals)
        if len(roof_t) == 1 and not cals_t and not hops:
            return _single_stage_timer(*roof_t[0])

        def fn(b: int, n: int, new: int) -> float:
            steps = new - 1 if new > 1 else 0
            c0, c1 = n + 1, n + steps
            t = hop_lat * (1 + steps) + b * hop_inv * (n + steps)
            for k, lf, la, lb, kv, ka, ac, hf, hr, over in roof_t:
                comp = b * (n * lf + la * n * (n + 1) * 0.5)
                mem = lb + b * n * ka
                hd = b * hf
                if hd < hr:
                    hd = hr
                t += k * (comp if comp > mem else mem) + over + ac * b * n + hd * (1 + steps)
                if steps:
                    t += steps * (over + ac * b)
                    # k * sum_{c=c0}^{c1} max(a1 + b1 c, a2 + b2 c)
                    # (inlined _sum_max_lines: this closure is the scheduler's inner loop)
                    a1, b1, a2, b2 = b * lf, b * la, lb, b * kv
                    if b1 > b2 or (b1 == b2 and a1 >= a2):
                        sp, sq, fp, fq = a1, b1, a2, b2
                    else:
                        sp, sq, fp, fq = a2, b2, a1, b1
                    x = (fp - sp) / (sq - fq) if sq != fq else -1.0
                    if x < c0:
                        t += k * (steps * sp + sq * (c0 + c1) * steps * 0.5)
                    elif x >= c1:
                        t += k * (steps * fp + fq * (c0 + c1) * steps * 0.5)
                    else:
                        cut = int(x)
                        n1, n2 = cut - c0 + 1, c1 - cut
                        t += k * (n1 * fp + fq * (c0 + cut) * n1 * 0.5 + n2 * sp + sq * (cut + 1 + c1) * n2 * 0.5)
            for share, p0, p1, p2, d0, d1, d2 in cals_t:
                t += share * (p0 + p1 * b * n + p2 * b * n * n)
                if steps:
                    t += share * (steps * (d0 + d1 * b) + d2 * b * (c0 + c1) * steps * 0.5)
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


def _same_model(a: str, b: str) -> bool:
    """Loose model-name match: case-insensitive, and a folder path matches its basename."""
    if not a:
        return True

    def norm(x: str) -> str:
        return x.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()

    return a.lower() == b.lower() or norm(a) == norm(b)


def _single_stage_timer(k, lf, la, lb, kv, ka, ac, hf, hr, over) -> Callable[[int, int, int], float]:
    """CostModel._compile's closure for the common one-device roofline replica, unrolled."""

    def fn(b: int, n: int, new: int) -> float:
        steps = new - 1 if new > 1 else 0
        comp = b * (n * lf + la * n * (n + 1) * 0.5)
        mem = lb + b * n * ka
        hd = b * hf
        if hd < hr:
            hd = hr
        t = k * (comp if comp > mem else mem) + over + ac * b * n + hd * (1 + steps)
        if not steps:
            return t
        c0, c1 = n + 1, n + steps
        t += steps * (over + ac * b)
        a1, b1, b2 = b * lf, b * la, b * kv
        if b1 > b2 or (b1 == b2 and a1 >= lb):
            sp, sq, fp, fq = a1, b1, lb, b2
        else:
            sp, sq, fp, fq = lb, b2, a1, b1
        x = (fp - sp) / (sq - fq) if sq != fq else -1.0
        if x < c0:
            return t + k * (steps * sp + sq * (c0 + c1) * steps * 0.5)
        if x >= c1:
            return t + k * (steps * fp + fq * (c0 + c1) * steps * 0.5)
        cut = int(x)
        n1, n2 = cut - c0 + 1, c1 - cut
        return t + k * (n1 * fp + fq * (c0 + cut) * n1 * 0.5 + n2 * sp + sq * (cut + 1 + c1) * n2 * 0.5)

    return fn
