"""Measured cost-model coefficients for one device (and engine), stored with the hardware profile.

The fitted forms (seconds), for the whole model on one device:
  prefill_s(b, L)  = p0 + p1 * b * L + p2 * b * L * L       (b rows, L prompt tokens each)
  decode_s(b, ctx) = d0 + d1 * b + d2 * b * ctx              (one step, ctx tokens of context)
SKELETON: the dataclass is the contract; measurement (torch) and fitting follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class Calibration:
    device_name: str  # Device.name it was measured on
    engine: str  # "hf" | "vllm"
    model: str  # ModelProfile.name it was measured with
    prefill: tuple[float, float, float]
    decode: tuple[float, float, float]
    measured_at: str = ""
    samples: int = 0
    fit_error: dict = field(default_factory=dict)  # e.g. {"prefill_mape": .., "decode_mape": ..}

    def prefill_s(self, batch: int, prompt_tokens: int) -> float:
        p0, p1, p2 = self.prefill
        return p0 + p1 * batch * prompt_tokens + p2 * batch * prompt_tokens * prompt_tokens

    def decode_s(self, batch: int, context: int) -> float:
        d0, d1, d2 = self.decode
        return d0 + d1 * batch + d2 * batch * context
