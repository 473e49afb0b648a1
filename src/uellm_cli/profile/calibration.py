"""Measured cost-model coefficients for one device (and engine), stored with the hardware profile.

The fitted forms (seconds), for the whole model on one device:
  prefill_s(b, L)  = p0 + p1 * b * L + p2 * b * L * L       (b rows, L prompt tokens each)
  decode_s(b, ctx) = d0 + d1 * b + d2 * b * ctx              (one step, ctx tokens of context)
Measured by engine/calibrate.py (hf) and engine/vllm_calibrate.py, fitted and stored by
profile/calibrate.py, refitted from real runs by profile/run_calibration.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


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

    def step_s(self, prefill_tokens: int, prefill_attention: float, decode_rows: int,
               decode_context: float) -> float:
        """One continuous-batching engine step (plan/steptime.py, which folds this form into
        the simulator's inner loop): both forms added, with one forward's overhead."""
        p0, p1, p2 = self.prefill
        d0, d1, d2 = self.decode
        return ((d0 if decode_rows else p0) + d1 * decode_rows + d2 * decode_context
                + p1 * prefill_tokens + p2 * prefill_attention)

    @property
    def threads(self) -> int | None:
        """The CPU threads it was measured with, when recorded."""
        t = self.fit_error.get("threads")
        return int(t) if t else None

    @property
    def instances(self) -> int:
        """The CPU instances that ran side by side while it was measured (1 unless recorded)."""
        return int(self.fit_error.get("instances") or 1)

    def scaled(self, factor: float, **notes) -> Calibration:
        """Every time multiplied by `factor`, with `notes` added to fit_error (why)."""
        return replace(self, prefill=tuple(x * factor for x in self.prefill),
                       decode=tuple(x * factor for x in self.decode),
                       fit_error={**self.fit_error, **notes})

    def side_by_side(self, instances: int) -> Calibration:
        """This calibration of one instance with all the threads, for each of `instances`
        instances that split them and run at once, when none was measured that way: every time
        multiplied by `instances`, so together they are no faster than the one. They share the
        memory bandwidth: on a 2-core CPU two 1-thread instances ran 330 tok/s together against
        500-578 for one 2-thread instance, while one 1-thread instance alone, beside an idle
        core, runs more than half as fast as two threads."""
        if instances <= 1:
            return self
        return self.scaled(instances, side_by_side=instances)

    def for_threads(self, threads: int, *, measured: int | None = None,
                    device_name: str | None = None) -> Calibration:
        """This calibration for a CPU run on `threads` threads: every time multiplied by
        measured / threads when fewer threads run than were measured (linear, so on the safe
        side for memory-bound steps), never made faster. `measured` defaults to the recorded
        thread count; with neither, the times stay. `device_name`: file it under another
        device (a Ray CPU slot derived from this CPU)."""
        measured = measured or self.threads
        factor = max(1.0, measured / max(1, threads)) if measured else 1.0
        name = device_name or self.device_name
        if factor == 1.0 and name == self.device_name:
            return self
        extra = {"time_factor": factor, "for_threads": threads}
        if name != self.device_name:
            extra["derived_from"] = self.device_name
        return replace(self.scaled(factor, **extra), device_name=name)


def same_model(a: str, b: str) -> bool:
    """Loose model-name match (a calibration's model against a profile's): case-insensitive,
    and a folder path matches its basename; an empty name matches any."""
    if not a:
        return True

    def norm(x: str) -> str:
        return x.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()

    return a.lower() == b.lower() or norm(a) == norm(b)
