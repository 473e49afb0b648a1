"""The linear length model, the fixed `prompt` coefficients, and fitting (numpy only; pure: no
torch, no I/O, no clock).

Model: log(natural output tokens) = b + x·w + noise, ridge-penalised. x = standardised numeric
prompt features (length_features.NUMERIC_FEATURES), then for `history` models two more blocks:
- `prompt_prior`: log of the `prompt` predictor's estimate, penalised 100x less than the rest,
  so a history model starts from the generic answer length and learns how its model differs
  (with few rows it stays close to `prompt`; with many the other features take over);
- hashed words/bigrams (x HASH_SCALE).

Censoring. A row that stopped at max_new_tokens (finish_reason "length") only says
log(tokens) >= log(cap). We fit with Tobit EM: starting from an ordinary ridge fit, replace each
censored target by its expected value under the current fit given that it exceeds the cap,
    E[y | y > c] = mu + sigma * phi(a) / (1 - Phi(a)),  a = (c - mu) / sigma,
(never more than 16x the cap: a small model's greedy decoding can loop forever, and an unbounded
imputation feeds on itself), refit, re-estimate sigma (ridge degrees of freedom corrected), and
repeat. Treating cut rows as if they had stopped at the cap would bias long answers down.

The ridge strength and the point quantile (0.4 or 0.5 of the residuals) are picked by K-fold
cross-validation on the MAE in tokens of the capped point estimate (the number `evaluate`
reports). The residual quantiles for the point estimate and the upper bound come from the
out-of-fold residuals through Kaplan-Meier (censored residuals are lower bounds), falling back to
a normal quantile when censoring hides the quantile.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from uellm_cli.profile import length_features as lf

L2_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
POINT_QUANTILES = (0.4, 0.5)
HASH_SCALE = 2.0  # weight of the hashed block against the standardised numeric block
PRIOR_SCALE = 10.0  # weight of the prompt_prior column (its penalty is 1/100 of the others)
EM_ITERS = 25
MAX_LOG_EXCESS = math.log(16.0)
PRIOR_FEATURE = "prompt_prior"

# Fitted once by `bench/gen_length_data.py --fit` on the train split (70%, hash of id; 355
# prompts) of ../shared/workloads/alpaca_eval_dev.jsonl. Target: mean over the six reference
# models of log(answer tokens), tokens = words x 1.4374 (SmolLM2 tokens per whitespace word on the
# reference texts). Numeric features only (order: length_features.NUMERIC_FEATURES), ridge l2 = 30
# chosen by 5-fold CV. prompt_tokens was held at 0 in the fit (its scale depends on each model's
# chat template), so its weight is 0 and prompt length enters through log_words.
# request_factor: median answer/request ratio over the 9 train prompts that state a length.
PROMPT_MODEL: dict = {
    "features": list(lf.NUMERIC_FEATURES),
    "numeric_mean": [
        0.0, 3.060522, 0.3844804, 0.4985915, 0.2873239, 0.1521127, 0.1098592, 0.02535211,
        0.02816901, 0.05915493, 0.1577465, 0.1014085, 0.01690141, 0.1126761, 0.08450704, 0.01126761,
        0.05070423, 0.04507042, 0.07042254, 0.1605634, 0.02535211, 0.1141796,
    ],
    "numeric_scale": [
        1.0, 0.8018395, 0.6286513, 0.499998, 0.452514, 0.3591301, 0.3127141, 0.1571922, 0.1654555,
        0.2359144, 0.3645031, 0.3018688, 0.1289021, 0.3161964, 0.2781467, 0.1055493, 0.219393,
        0.2074586, 0.2558578, 0.3671277, 0.1571922, 0.7154211,
    ],
    "coef_numeric": [
        0.0, 0.1437559, -0.09894376, -0.03523806, -0.2707115, 0.03704869, 0.1628467, 0.0592597,
        -0.02444941, -0.006265596, 0.135605, 0.1123805, 0.0317054, 0.1048299, -0.05977431,
        0.02215406, -0.06577697, -0.07687603, -0.1163016, 0.02820525, -0.04496323, 0.02304275,
    ],
    "intercept": 5.328321,
    "point_quantile": 0.5,
    "point_offset": 0.108666,
    "upper_offset": 0.669024,
    "hash_dim": 0,
    "request_factor": 1.4342,
}


def prior_id() -> str:
    """Fingerprint of PROMPT_MODEL: a history model trained on another prior is refused."""
    blob = json.dumps({k: v for k, v in PROMPT_MODEL.items() if k != "features"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(slots=True)
class LinearLengthModel:
    """log(tokens) = intercept + z(numeric)·coef_numeric + hashed·coef_hash, where z standardises
    each numeric feature (plus `prompt_prior` when use_prior). `point_offset`/`upper_offset` are
    quantiles of the (out-of-fold, censoring-aware) log residuals: point = exp(mu +
    point_offset), upper = exp(mu + upper_offset), both then capped.
    """

    numeric_mean: np.ndarray
    numeric_scale: np.ndarray
    coef_numeric: np.ndarray
    intercept: float
    point_offset: float
    upper_offset: float
    hash_dim: int = 0
    coef_hash: np.ndarray = field(default_factory=lambda: np.zeros(0))
    use_prior: bool = False
    point_quantile: float = 0.5

    def numeric(self, queries: Sequence) -> np.ndarray:
        num = np.stack([lf.numeric_features(q.text, q.prompt_tokens) for q in queries])
        if self.use_prior:
            num = np.hstack([num, prompt_log_tokens(queries)[:, None]])
        return num

    def log_tokens(self, queries: Sequence) -> np.ndarray:
        """Predicted log(natural output tokens), i.e. before any cap."""
        mu = self.intercept + ((self.numeric(queries) - self.numeric_mean) / self.numeric_scale) \
            @ self.coef_numeric
        if self.hash_dim:
            hashed = np.stack([lf.hashed_features(q.text, self.hash_dim) for q in queries])
            mu = mu + hashed @ self.coef_hash
        return mu

    def predict(self, queries: Sequence) -> list[tuple[int, int]]:
        """(point, upper) per query (a LengthQuery), both within [1, max_new_tokens]."""
        if not queries:
            return []
        return _capped(self.log_tokens(queries) + self.point_offset,
                       self.upper_offset - self.point_offset, queries)

    def features(self) -> list[str]:
        return list(lf.NUMERIC_FEATURES) + ([PRIOR_FEATURE] if self.use_prior else [])

    def to_dict(self) -> dict:
        d = {
            "features": self.features(),
            "numeric_mean": rounded_list(self.numeric_mean),
            "numeric_scale": rounded_list(self.numeric_scale),
            "coef_numeric": rounded_list(self.coef_numeric),
            "intercept": round(float(self.intercept), 6),
            "point_quantile": self.point_quantile,
            "point_offset": round(float(self.point_offset), 6),
            "upper_offset": round(float(self.upper_offset), 6),
            "hash_dim": int(self.hash_dim),
            # sparse: hashed buckets never seen in training have an exact zero weight
            "coef_hash": {str(i): v for i, v in enumerate(rounded_list(self.coef_hash)) if v},
        }
        if self.use_prior:
            d["prior_id"] = prior_id()
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> LinearLengthModel:
        use_prior = PRIOR_FEATURE in d["features"]
        expected = list(lf.NUMERIC_FEATURES) + ([PRIOR_FEATURE] if use_prior else [])
        if list(d["features"]) != expected:
            raise ValueError("its feature list differs from this version of uellm; retrain it")
        if use_prior and d.get("prior_id") != prior_id():
            raise ValueError("it was trained on another `prompt` prior; retrain it")
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
            point_offset=float(d["point_offset"]),
            upper_offset=float(d["upper_offset"]),
            hash_dim=dim,
            coef_hash=coef_hash,
            use_prior=use_prior,
            point_quantile=float(d.get("point_quantile", 0.5)),
        )


@lru_cache(maxsize=1)
def _prompt_model() -> LinearLengthModel:
    return LinearLengthModel.from_dict(PROMPT_MODEL)


def prompt_log_tokens(queries: Sequence) -> np.ndarray:
    """log of the `prompt` predictor's point estimate before the cap.

    A prompt that states its length ("in 3 sentences", "100 words", "one word", "yes or no")
    gets request_factor x the requested tokens instead of the regression: such requests are too
    rare in any dev set for a regression to learn, and too informative to ignore.
    """
    model = _prompt_model()
    mu = model.log_tokens(queries) + model.point_offset
    factor = float(PROMPT_MODEL["request_factor"])
    for i, q in enumerate(queries):
        req = lf.requested_tokens(q.text)
        if req is not None:
            mu[i] = math.log(max(req * factor, 1.0))
    return mu


def prompt_predict(queries: Sequence) -> list[tuple[int, int]]:
    """(point, upper) of the `prompt` predictor."""
    if not queries:
        return []
    model = _prompt_model()
    return _capped(prompt_log_tokens(queries), model.upper_offset - model.point_offset, queries)


def _capped(log_point: np.ndarray, spread: float, queries: Sequence) -> list[tuple[int, int]]:
    out = []
    for q, m in zip(queries, log_point, strict=True):
        cap = max(int(q.max_new_tokens), 1)
        tokens = clip_tokens(m, 1, cap)
        out.append((tokens, clip_tokens(m + max(spread, 0.0), tokens, cap)))
    return out


def clip_tokens(log_value: float, lo: int, hi: int) -> int:
    """exp(log_value) rounded into [lo, hi] (hi when the model gives no number)."""
    if not math.isfinite(float(log_value)):
        return hi
    value = math.exp(min(float(log_value), 30.0))
    return int(min(max(round(value), lo), hi))


def rounded_list(a: np.ndarray) -> list[float]:
    """Seven significant digits: plenty for these weights, and small JSON."""
    return [float(f"{float(v):.7g}") for v in a]


@dataclass(slots=True)
class FitResult:
    model: LinearLengthModel
    l2: float
    cv_mae: float | None
    sigma: float


class Ridge:
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


def norm_sf(a: np.ndarray) -> np.ndarray:
    """1 - Phi(a), the standard normal's upper tail, elementwise (erfc: exact far out)."""
    return 0.5 * np.vectorize(math.erfc, otypes=[float])(a / math.sqrt(2.0))


def _mills(a: np.ndarray) -> np.ndarray:
    """phi(a) / (1 - Phi(a)), stable for large a (asymptotically a + 1/a)."""
    a = np.asarray(a, dtype=np.float64)
    out = np.empty_like(a)
    big = a > 8.0
    out[big] = a[big] + 1.0 / a[big]
    s = a[~big]
    out[~big] = np.exp(-0.5 * s * s) / math.sqrt(2 * math.pi) / np.maximum(norm_sf(s), 1e-300)
    return out


def tobit(ridge: Ridge, y: np.ndarray, cens: np.ndarray, lam: float
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
            sigma = math.sqrt(float(np.sum((y - mu) ** 2)) / max(n - dof, 0.25 * n))
            break
        a = (y[cens] - mu[cens]) / sigma
        lam_a = _mills(a)
        second = np.sum((y[~cens] - mu[~cens]) ** 2) + np.sum(sigma**2 * (1.0 + a * lam_a))
        yy = y.copy()
        yy[cens] = np.minimum(mu[cens] + sigma * lam_a, y[cens] + MAX_LOG_EXCESS)
        sigma = max(math.sqrt(float(second) / max(n - dof, 0.25 * n)), 1e-3)
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


def _design(queries: Sequence, hash_dim: int, use_prior: bool) -> tuple[np.ndarray, np.ndarray]:
    probe = LinearLengthModel(np.zeros(0), np.zeros(0), np.zeros(0), 0.0, 0.0, 0.0,
                              use_prior=use_prior)
    num = probe.numeric(queries)
    if hash_dim:
        hashed = np.stack([lf.hashed_features(q.text, hash_dim) for q in queries])
    else:
        hashed = np.zeros((len(queries), 0))
    return num, hashed


def _standardise(num: np.ndarray, use_prior: bool) -> tuple[np.ndarray, np.ndarray]:
    mean, scale = num.mean(0), num.std(0)
    scale[scale == 0] = 1.0
    if use_prior:
        scale[-1] /= PRIOR_SCALE  # a larger column needs a smaller weight: penalised less
    return mean, scale


def _stack(num: np.ndarray, hashed: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.hstack([(num - mean) / scale, HASH_SCALE * hashed])


def _capped_mae(log_point: np.ndarray, tokens: np.ndarray, caps: np.ndarray) -> float:
    pred = np.clip(np.round(np.exp(np.minimum(log_point, 30.0))), 1, caps)
    return float(np.mean(np.abs(pred - tokens)))


def fit_linear(queries: Sequence, tokens: np.ndarray, censored: np.ndarray, *,
               hash_dim: int = 1024, quantile: float = 0.9, l2: float | None = None,
               use_prior: bool = True, point_quantiles: Sequence[float] = POINT_QUANTILES,
               folds: int | None = None, seed: int = 0) -> FitResult:
    """Fit a LinearLengthModel on (queries, observed output tokens, censored flags)."""
    tokens = np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)
    cens = np.asarray(censored, dtype=bool)
    caps = np.array([max(q.max_new_tokens, 1) for q in queries], dtype=np.float64)
    y = np.log(tokens)
    num, hashed = _design(queries, hash_dim, use_prior)
    n = y.size
    grid = (l2,) if l2 is not None else L2_GRID
    k = min(folds or (5 if n <= 1000 else 3), n)
    fold_of = np.random.default_rng(seed).permutation(n) % k
    oof = {lam: np.zeros(n) for lam in grid}
    for f in range(k):
        tr, te = fold_of != f, fold_of == f
        mean, scale = _standardise(num[tr], use_prior)
        z_tr = _stack(num[tr], hashed[tr], mean, scale)
        z_mean = z_tr.mean(0)
        ridge = Ridge(z_tr - z_mean)
        z_te = _stack(num[te], hashed[te], mean, scale) - z_mean
        for lam in grid:
            w, b, _ = tobit(ridge, y[tr], cens[tr], lam)
            oof[lam][te] = z_te @ w + b
    # (MAE, l2, point quantile, point offset) for every candidate; smallest MAE wins
    scores = []
    for lam in grid:
        for pq in point_quantiles:
            off = km_quantile(y - oof[lam], cens, pq)
            off = 0.0 if off is None else off
            scores.append((_capped_mae(oof[lam] + off, tokens, caps), -lam, pq, off))
    cv_mae, neg_lam, point_q, point_off = min(scores)
    best = -neg_lam

    mean, scale = _standardise(num, use_prior)
    z = _stack(num, hashed, mean, scale)
    z_mean = z.mean(0)
    w, b, sigma = tobit(Ridge(z - z_mean), y, cens, best)
    # back to raw coordinates: mu = b + (z - z_mean)·w
    w_num, w_hash = w[: num.shape[1]], w[num.shape[1]:] * HASH_SCALE
    intercept = b - float(z_mean @ w)

    upper = km_quantile(y - oof[best], cens, quantile)
    if upper is None:
        upper = _Z.get(round(quantile, 2), 1.2816) * sigma
    model = LinearLengthModel(
        numeric_mean=mean, numeric_scale=scale, coef_numeric=w_num, intercept=intercept,
        point_offset=point_off, upper_offset=max(upper, point_off), hash_dim=hash_dim,
        coef_hash=w_hash if hash_dim else np.zeros(0), use_prior=use_prior,
        point_quantile=point_q,
    )
    return FitResult(model=model, l2=float(best), cv_mae=cv_mae, sigma=sigma)
