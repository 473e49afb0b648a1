"""The linear length model and its fitting (numpy only; pure: no torch, no I/O, no clock).

Model: log(natural output tokens) = b + x·w + noise, ridge-penalised. A row that stopped at
max_new_tokens (finish_reason "length") only says log(tokens) >= log(cap): it is right-censored.
We fit with Tobit EM: starting from an ordinary ridge fit, replace each censored target by its
expected value under the current fit given that it exceeds the cap,
    E[y | y > c] = mu + sigma * phi(a) / (1 - Phi(a)),  a = (c - mu) / sigma,
refit, re-estimate sigma (ridge degrees of freedom corrected), and repeat. Treating cut rows as
if they had stopped at the cap would bias every prediction for long answers down.

The ridge strength is picked by K-fold cross-validation on the tokens MAE of the capped point
estimate (the number `evaluate` reports). The residual quantiles used for the point estimate
(median) and the upper bound come from the out-of-fold residuals through a Kaplan-Meier
estimate (censored residuals are lower bounds), falling back to a normal quantile when
censoring leaves the quantile undetermined.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from uellm_cli.profile import length_features as lf

L2_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
HASH_SCALE = 2.0  # weight of the hashed block against the standardised numeric block
EM_ITERS = 25


@dataclass(slots=True)
class LinearLengthModel:
    """log(tokens) = intercept + z(numeric)·coef_numeric + hashed·coef_hash, where z standardises
    each numeric feature. `median_offset`/`upper_offset` are quantiles of the (out-of-fold,
    censoring-aware) log residuals: point = exp(mu + median_offset), upper = exp(mu + upper_offset).
    """

    numeric_mean: np.ndarray
    numeric_scale: np.ndarray
    coef_numeric: np.ndarray
    intercept: float
    median_offset: float
    upper_offset: float
    hash_dim: int = 0
    coef_hash: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def log_tokens(self, queries: Sequence) -> np.ndarray:
        """Predicted log(natural output tokens), i.e. before any cap."""
        num = np.stack([lf.numeric_features(q.text, q.prompt_tokens) for q in queries])
        mu = self.intercept + ((num - self.numeric_mean) / self.numeric_scale) @ self.coef_numeric
        if self.hash_dim:
            hashed = np.stack([lf.hashed_features(q.text, self.hash_dim) for q in queries])
            mu = mu + hashed @ self.coef_hash
        return mu

    def predict(self, queries: Sequence) -> list[tuple[int, int]]:
        """(point, upper) per query (a LengthQuery), both within [1, max_new_tokens]."""
        if not queries:
            return []
        mu = self.log_tokens(queries)
        out = []
        for q, m in zip(queries, mu, strict=True):
            cap = max(int(q.max_new_tokens), 1)
            tokens = clip_tokens(m + self.median_offset, 1, cap)
            out.append((tokens, clip_tokens(m + self.upper_offset, tokens, cap)))
        return out

    def to_dict(self) -> dict:
        return {
            "features": list(lf.NUMERIC_FEATURES),
            "numeric_mean": _rounded(self.numeric_mean),
            "numeric_scale": _rounded(self.numeric_scale),
            "coef_numeric": _rounded(self.coef_numeric),
            "intercept": round(float(self.intercept), 6),
            "median_offset": round(float(self.median_offset), 6),
            "upper_offset": round(float(self.upper_offset), 6),
            "hash_dim": int(self.hash_dim),
            # sparse: hashed buckets never seen in training have an exact zero weight
            "coef_hash": {str(i): v for i, v in enumerate(_rounded(self.coef_hash)) if v},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> LinearLengthModel:
        if list(d["features"]) != list(lf.NUMERIC_FEATURES):
            raise ValueError("feature list differs from this version of uellm")
        dim = int(d.get("hash_dim", 0))
        scale = np.asarray(d["numeric_scale"], dtype=np.float64)
        coef_hash = np.zeros(dim)
        for k, v in d.get("coef_hash", {}).items():
            coef_hash[int(k)] = float(v)
        return cls(
            numeric_mean=np.asarray(d["numeric_mean"], dtype=np.float64),
            numeric_scale=np.where(scale > 0, scale, 1.0),
            coef_numeric=np.asarray(d["coef_numeric"], dtype=np.float64),
            intercept=float(d["intercept"]),
            median_offset=float(d["median_offset"]),
            upper_offset=float(d["upper_offset"]),
            hash_dim=dim,
            coef_hash=coef_hash,
        )


def clip_tokens(log_value: float, lo: int, hi: int) -> int:
    """exp(log_value) rounded into [lo, hi] (hi when the model gives no number)."""
    if not math.isfinite(float(log_value)):
        return hi
    value = math.exp(min(float(log_value), 30.0))
    return int(min(max(round(value), lo), hi))


def _rounded(a: np.ndarray) -> list[float]:
    """Seven significant digits: plenty for these weights, and small JSON."""
    return [float(f"{float(v):.7g}") for v in a]


@dataclass(slots=True)
class FitResult:
    model: LinearLengthModel
    l2: float
    cv_mae: float | None
    sigma: float


class _Ridge:
    """Ridge solutions for many targets and strengths from one eigendecomposition of a centred
    design (primal d x d when d <= n, dual n x n otherwise)."""

    def __init__(self, z: np.ndarray):
        self.z = z
        n, d = z.shape
        self.primal = d <= n
        gram = z.T @ z if self.primal else z @ z.T
        e, v = np.linalg.eigh(gram)
        self.e, self.v = np.clip(e, 0.0, None), v

    def solve(self, yc: np.ndarray, lam: float) -> np.ndarray:
        if self.primal:
            return self.v @ ((self.v.T @ (self.z.T @ yc)) / (self.e + lam))
        return self.z.T @ (self.v @ ((self.v.T @ yc) / (self.e + lam)))

    def dof(self, lam: float) -> float:
        return float(np.sum(self.e / (self.e + lam)))


def _norm_cdf_upper(a: np.ndarray) -> np.ndarray:
    """1 - Phi(a)."""
    return 0.5 * np.vectorize(math.erfc, otypes=[float])(a / math.sqrt(2.0))


def _mills(a: np.ndarray) -> np.ndarray:
    """phi(a) / (1 - Phi(a)), stable for large a (asymptotically a + 1/a)."""
    a = np.asarray(a, dtype=np.float64)
    out = np.empty_like(a)
    big = a > 8.0
    out[big] = a[big] + 1.0 / a[big]
    s = a[~big]
    out[~big] = np.exp(-0.5 * s * s) / math.sqrt(2 * math.pi) / np.maximum(_norm_cdf_upper(s), 1e-300)
    return out


def _tobit(ridge: _Ridge, y: np.ndarray, cens: np.ndarray, lam: float
           ) -> tuple[np.ndarray, float, float]:
    """Censored ridge by EM: returns (w, intercept, sigma) on the centred design."""
    n = y.size
    yy = y.copy()
    sigma = max(float(np.std(y)), 1e-3)
    w = np.zeros(ridge.z.shape[1])
    b = float(np.mean(yy))
    dof = ridge.dof(lam)
    for _ in range(EM_ITERS if cens.any() else 1):
        b = float(np.mean(yy))
        w = ridge.solve(yy - b, lam)
        mu = ridge.z @ w + b
        if not cens.any():
            sigma = math.sqrt(float(np.sum((y - mu) ** 2)) / max(n - dof, 1.0))
            break
        a = (y[cens] - mu[cens]) / sigma
        lam_a = _mills(a)
        second = np.sum((y[~cens] - mu[~cens]) ** 2) + np.sum(sigma**2 * (1.0 + a * lam_a))
        yy = y.copy()
        yy[cens] = mu[cens] + sigma * lam_a
        sigma = max(math.sqrt(float(second) / max(n - dof, 1.0)), 1e-3)
    return w, b, sigma


def km_quantile(resid: np.ndarray, cens: np.ndarray, q: float) -> float | None:
    """q-quantile of right-censored values by Kaplan-Meier; None if censoring hides it."""
    order = np.lexsort((cens, resid))  # events before censorings at equal values
    r, c = resid[order], cens[order]
    at_risk = r.size
    surv = 1.0
    for value, censored in zip(r, c, strict=True):
        if not censored:
            surv *= 1.0 - 1.0 / at_risk
            if 1.0 - surv >= q - 1e-12:
                return float(value)
        at_risk -= 1
    return None


_Z = {0.5: 0.0, 0.8: 0.8416, 0.9: 1.2816, 0.95: 1.6449, 0.99: 2.3263}


def _design(queries: Sequence, hash_dim: int) -> tuple[np.ndarray, np.ndarray]:
    num = np.stack([lf.numeric_features(q.text, q.prompt_tokens) for q in queries])
    if hash_dim:
        hashed = np.stack([lf.hashed_features(q.text, hash_dim) for q in queries])
    else:
        hashed = np.zeros((len(queries), 0))
    return num, hashed


def _stack(num: np.ndarray, hashed: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.hstack([(num - mean) / scale, HASH_SCALE * hashed])


def _capped_mae(mu: np.ndarray, tokens: np.ndarray, caps: np.ndarray) -> float:
    pred = np.clip(np.round(np.exp(np.minimum(mu, 30.0))), 1, caps)
    return float(np.mean(np.abs(pred - tokens)))


def fit_linear(queries: Sequence, tokens: np.ndarray, censored: np.ndarray, *,
               hash_dim: int = 1024, quantile: float = 0.9, l2: float | None = None,
               folds: int | None = None, seed: int = 0):
    """Fit a LinearLengthModel on (queries, observed output tokens, censored flags)."""
    tokens = np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)
    cens = np.asarray(censored, dtype=bool)
    caps = np.array([max(q.max_new_tokens, 1) for q in queries], dtype=np.float64)
    y = np.log(tokens)
    num, hashed = _design(queries, hash_dim)
    n = y.size
    grid = (l2,) if l2 is not None else L2_GRID
    k = min(folds or (5 if n <= 1000 else 3), n)
    fold_of = np.random.default_rng(seed).permutation(n) % k
    oof = {lam: np.zeros(n) for lam in grid}
    for f in range(k):
        tr, te = fold_of != f, fold_of == f
        mean, scale = num[tr].mean(0), num[tr].std(0)
        scale[scale == 0] = 1.0
        z_tr = _stack(num[tr], hashed[tr], mean, scale)
        z_mean = z_tr.mean(0)
        ridge = _Ridge(z_tr - z_mean)
        z_te = _stack(num[te], hashed[te], mean, scale) - z_mean
        for lam in grid:
            w, b, _ = _tobit(ridge, y[tr], cens[tr], lam)
            oof[lam][te] = z_te @ w + b
    maes = {lam: _capped_mae(oof[lam], tokens, caps) for lam in grid}
    best = min(grid, key=lambda lam: (maes[lam], -lam))

    mean, scale = num.mean(0), num.std(0)
    scale[scale == 0] = 1.0
    z = _stack(num, hashed, mean, scale)
    z_mean = z.mean(0)
    w, b, sigma = _tobit(_Ridge(z - z_mean), y, cens, best)
    # back to raw coordinates: mu = b + (x_std - z_mean)·w
    w_num, w_hash = w[: num.shape[1]], w[num.shape[1]:] * HASH_SCALE
    intercept = b - float(z_mean @ w)

    resid = y - oof[best]
    med = km_quantile(resid, cens, 0.5)
    upper = km_quantile(resid, cens, quantile)
    z_q = _Z.get(round(quantile, 2), 1.2816)
    model = LinearLengthModel(
        numeric_mean=mean, numeric_scale=scale, coef_numeric=w_num, intercept=intercept,
        median_offset=med if med is not None else 0.0,
        upper_offset=max(upper if upper is not None else z_q * sigma,
                         med if med is not None else 0.0),
        hash_dim=hash_dim, coef_hash=w_hash if hash_dim else np.zeros(0),
    )
    return FitResult(model=model, l2=float(best), cv_mae=maes[best],
                     sigma=sigma)
