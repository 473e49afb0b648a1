"""How the served model answers prompts that state a length ("write 100 words", "in 3
sentences"), learned from its past runs.

The length predictors read a stated length as `request_factor` x the requested tokens (about
what the AlpacaEval reference models write), and a small model is not such a model: asked for
N words, SmolLM2-135M writes far fewer, and the more it is asked for the smaller its share
(1,000 "Write N words about X" rows: 30 tokens for 20-40 words, 53 for 80-120, 66-93 for 160
and more, against 36, 123 and 125 predicted). The forecast of that job ran +55% long. A dev
set holds too few such prompts to learn it (9 in 355), so every run does:

    log(output tokens) = intercept + slope x log(requested tokens) + noise(sd)

fitted by censored regression (Tobit EM, length_fit.tobit: a row cut at its budget only
says its answer was at least that long) on the rows of past runs that stated a length. Only
numbers are kept (requested tokens, output tokens, budget, cut), never a prompt, so the
observations are recorded under `--no-history` too, as the step timings are. The predictions
for such rows replace the predictor's (`auto` only: lengths.RequestAware) once MIN_ROWS rows
are known. Pure (numpy) apart from the observation file (record_requests, load_request_fit).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uellm_cli.jobs.durable import atomic_write_bytes
from uellm_cli.profile import length_features as lf
from uellm_cli.profile.length_fit import Ridge, tobit
from uellm_cli.profile.length_two_part import mixture_mean

MIN_ROWS = 20  # rows that stated a length, before their fit replaces the predictor's guess
KEEP_ROWS = 4000  # newest observations the fit reads
UPPER_Z = 1.2816  # the 0.9 quantile of a normal, the predictors' upper quantile
SLOPE_RANGE = (0.0, 1.5)  # below 0 (less when asked for more) or past 1.5 is noise, not a model


@dataclass(slots=True, frozen=True)
class RequestObservation:
    """One finished row that stated a length."""

    requested_tokens: float
    output_tokens: int
    max_new_tokens: int
    cut: bool  # stopped by its budget: the answer would have been at least this long


@dataclass(slots=True, frozen=True)
class RequestFit:
    """log(output tokens) ~ normal(intercept + slope x log(requested tokens), sd)."""

    intercept: float
    slope: float
    sd: float
    rows: int
    cut: int

    def log_tokens(self, requested_tokens: float) -> float:
        return self.intercept + self.slope * math.log(max(requested_tokens, 1.0))

    def predict(self, requested_tokens: float, max_new_tokens: int) -> tuple[int, int, int]:
        """(point: the median, upper: the 0.9 quantile, mean: E[min(length, budget)]), each
        within 1 .. max_new_tokens."""
        cap = max(int(max_new_tokens), 1)
        mu = self.log_tokens(requested_tokens)
        point = min(max(round(math.exp(min(mu, 30.0))), 1), cap)
        upper = min(max(round(math.exp(min(mu + UPPER_Z * self.sd, 30.0))), point), cap)
        mean = float(mixture_mean(np.zeros(1), np.array([mu]), self.sd, np.array([float(cap)]))[0])
        return point, upper, min(max(round(mean), 1), cap)


def fit_requests(observations: Sequence[RequestObservation]) -> RequestFit | None:
    """The censored log-log fit of `observations`; None below MIN_ROWS rows, or when every
    one was cut (nothing says where answers end)."""
    obs = [o for o in observations if o.requested_tokens > 0 and o.output_tokens > 0]
    cut = np.array([o.cut for o in obs], dtype=bool)
    if len(obs) < MIN_ROWS or cut.all():
        return None
    x = np.log(np.array([o.requested_tokens for o in obs], dtype=np.float64))
    y = np.log(np.array([o.output_tokens for o in obs], dtype=np.float64))
    x_mean = float(x.mean())
    # a near-zero ridge: the one slope is free, and a job that asks for one length only
    # (no spread in x) gets slope 0 and its mean, which is right for that length
    w, b, sd = tobit(Ridge((x - x_mean)[:, None]), y, cut, 1e-6 * len(obs))
    slope = min(max(float(w[0]), SLOPE_RANGE[0]), SLOPE_RANGE[1])
    # b is the fitted mean of y at x_mean: a clipped slope still passes the line through it
    return RequestFit(intercept=b - slope * x_mean, slope=slope, sd=max(sd, 0.05), rows=len(obs),
                      cut=int(cut.sum()))


def observe(text: str, output_tokens: int | None, max_new_tokens: int,
            finish_reason: str | None) -> RequestObservation | None:
    """The observation of one finished row, or None when its prompt states no length."""
    requested = lf.requested_tokens(text)
    if requested is None or not output_tokens or output_tokens <= 0:
        return None
    return RequestObservation(requested, int(output_tokens), int(max_new_tokens),
                              finish_reason == "length" or output_tokens >= max_new_tokens)


# ---- storage: one JSONL file of observations per model (lengths.requests_path) ------------


def record_requests(observations: Iterable[RequestObservation], path: Path) -> int:
    """Append a run's observations to `path`; returns how many were written. Past twice
    KEEP_ROWS lines the file is cut back to the newest KEEP_ROWS (the fit reads no more), so a
    nightly job does not grow it for ever."""
    rows = [json.dumps({"requested_tokens": round(o.requested_tokens, 3),
                        "output_tokens": o.output_tokens, "max_new_tokens": o.max_new_tokens,
                        "cut": o.cut}) for o in observations]
    if not rows:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) > 2 * KEEP_ROWS:
        atomic_write_bytes(path, ("\n".join(lines[-KEEP_ROWS:]) + "\n").encode("utf-8"))
    return len(rows)


def load_request_fit(path: Path) -> RequestFit | None:
    """The fit of the newest KEEP_ROWS observations in `path`; None without enough."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()[-KEEP_ROWS:]
    except OSError:
        return None
    obs = []
    for line in lines:
        try:
            d = json.loads(line)
            obs.append(RequestObservation(float(d["requested_tokens"]), int(d["output_tokens"]),
                                          int(d["max_new_tokens"]), bool(d["cut"])))
        except (ValueError, KeyError, TypeError):
            continue  # a torn line from a killed run
    return fit_requests(obs)
