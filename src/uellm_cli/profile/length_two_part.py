"""The two-part length model of `history` (numpy only; pure: no torch, no I/O, no clock).

A small model decoding greedily often falls into a repetition loop and runs to whatever budget
it is given (63% of SmolLM2-135M's answers to the dev prompts reach 256 tokens). One log-normal
for all rows fits that badly: its point estimate is pulled between "loops" and "answers in 60
tokens". The two-part model keeps them apart:
  p(x)      = P(the row runs to its budget), ridge logistic regression on the row's cut flag;
  m(x), sd  = log length of the rows that stopped, ridge regression + residual spread.
The output at budget B is min(X, B) with X = "never stops" with probability p, else
log-normal(m, sd); its quantiles are min(Q_X(q), B), so a model trained at one budget answers
at any smaller one exactly and at a larger one under the assumption that a loop runs on.
Features: the `prompt` estimate (log tokens, penalised 100x less: the model starts from the
generic answer length and learns how the served model differs) and optionally hashed
words/bigrams. Where the point estimate reaches the budget it is lowered by
tie_break x (1 - p) x B (a few tokens) so that rows the model expects to be cut are still
ordered by how likely that is, instead of tying at B.
Beside the point (a quantile: what a row most likely needs, which orders rows and judges their
deadlines) the model gives the mean E[min(X, B)], which the planner uses where lengths add up
into the job's time: a row that loops one time in six has its short answer as its point, but a
sixth of a loop in its mean (docs/lengths.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from uellm_cli.profile import length_features as lf
from uellm_cli.profile.length_fit import (
    PRIOR_FEATURE,
    norm_sf,
    prior_id,
    prompt_log_tokens,
    rounded_list,
)

TWO_PART_HASH_SCALE = 3.0
PRIOR_PENALTY = 0.01  # the prior's ridge penalty relative to the other columns
_P_CLIP = 1e-4


def _logistic(a: np.ndarray, y: np.ndarray, lam: float, pen: np.ndarray, iters: int = 30
              ) -> np.ndarray:
    """Ridge logistic regression by Newton steps; returns [intercept, weights]. Penalty lam*pen
    per column (the intercept gets 1e-6 so separable data stays finite). With more columns than
    rows each step solves an n x n system (Woodbury), so 1024 hashed buckets stay cheap."""
    n, d = a.shape
    x = np.hstack([np.ones((n, 1)), a])
    pdiag = np.concatenate([[1e-6], lam * pen])
    w = np.zeros(d + 1)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        g = x.T @ (p - y) + pdiag * w
        s = np.maximum(p * (1.0 - p), 1e-9)
        if d + 1 <= n:
            h = (x * s[:, None]).T @ x + np.diag(pdiag)
            step = np.linalg.solve(h, g)
        else:  # (X'SX + P)^-1 g = P^-1 g - P^-1 X' (S^-1 + X P^-1 X')^-1 X P^-1 g
            pg = g / pdiag
            xp = x / pdiag
            inner = np.diag(1.0 / s) + xp @ x.T
            step = pg - xp.T @ np.linalg.solve(inner, x @ pg)
        w -= step
        if float(np.max(np.abs(step))) < 1e-7:
            break
    return w


def _ridge_fit(a: np.ndarray, y: np.ndarray, lam: float, pen: np.ndarray) -> np.ndarray:
    """Ridge regression with an unpenalised intercept; returns [intercept, weights]."""
    n, d = a.shape
    mx, my = a.mean(0), float(y.mean())
    ac = a - mx
    if d <= n:
        w = np.linalg.solve(ac.T @ ac + np.diag(lam * pen), ac.T @ (y - my))
    else:  # dual form: w = P^-1 A' (A P^-1 A' + I)^-1 y
        ap = ac / (lam * pen)
        w = ap.T @ np.linalg.solve(ac @ ap.T + np.eye(n), y - my)
    return np.concatenate([[my - float(mx @ w)], w])


def _inv_norm(q: np.ndarray) -> np.ndarray:
    """Standard normal quantile, elementwise (statistics.NormalDist: exact to double precision)."""
    from statistics import NormalDist

    nd = NormalDist()
    return np.array([nd.inv_cdf(float(v)) for v in np.ravel(q)]).reshape(np.shape(q))


def mixture_tokens(p: np.ndarray, m: np.ndarray, sd: float, q: float, caps: np.ndarray,
                   tie_break: float = 0.0) -> np.ndarray:
    """q-quantile of min(X, cap) when X never stops with probability p, else is
    log-normal(m, sd); where it reaches the cap, cap x (1 - tie_break x (1 - p)). Not rounded."""
    p = np.clip(np.asarray(p, dtype=np.float64), _P_CLIP, 1 - _P_CLIP)
    frac = np.clip(q / (1.0 - p), 1e-9, 1 - 1e-9)
    finite = q < 1.0 - p
    natural = np.where(finite, np.exp(np.minimum(m + sd * _inv_norm(frac), 30.0)), np.inf)
    return np.where(natural >= caps, caps * (1.0 - tie_break * (1.0 - p)), natural)


def mixture_mean(p: np.ndarray, m: np.ndarray, sd: float, caps: np.ndarray) -> np.ndarray:
    """E[min(X, cap)] when X never stops with probability p, else is log-normal(m, sd):
    p cap + (1 - p) (e^(m + sd^2/2) Phi(z - sd) + cap (1 - Phi(z))), z = (ln cap - m) / sd.
    Not rounded."""
    p = np.clip(np.asarray(p, dtype=np.float64), _P_CLIP, 1 - _P_CLIP)
    m = np.minimum(np.asarray(m, dtype=np.float64), 30.0)
    caps = np.asarray(caps, dtype=np.float64)
    z = (np.log(caps) - m) / sd
    stopped = np.exp(m + sd * sd / 2.0) * (1.0 - norm_sf(z - sd)) + caps * norm_sf(z)
    return p * caps + (1.0 - p) * np.minimum(stopped, caps)


@dataclass(slots=True)
class TwoPartLengthModel:
    """P(run to the budget) by logistic regression and log(length | stopped) by ridge, on
    [prompt prior, hashed words]. coef_* = [intercept, prior weight, hashed weights...]."""

    coef_hit: np.ndarray
    coef_len: np.ndarray
    sd_len: float
    point_quantile: float = 0.5
    upper_quantile: float = 0.9
    tie_break: float = 0.05
    hash_dim: int = 0
    use_prior: bool = True

    def design(self, queries: Sequence) -> np.ndarray:
        cols = []
        if self.use_prior:
            cols.append(prompt_log_tokens(queries)[:, None])
        if self.hash_dim:
            cols.append(TWO_PART_HASH_SCALE
                        * np.stack([lf.hashed_features(q.text, self.hash_dim) for q in queries]))
        return np.hstack(cols) if cols else np.zeros((len(queries), 0))

    def parts(self, queries: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """(P(runs to the budget), log median length if it stops) per query."""
        a = self.design(queries)
        z = self.coef_hit[0] + a @ self.coef_hit[1:]
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        return p, self.coef_len[0] + a @ self.coef_len[1:]

    def log_tokens(self, queries: Sequence) -> np.ndarray:
        """log of the point estimate without a budget (inf where the row is expected to loop)."""
        p, m = self.parts(queries)
        big = np.full(len(queries), np.inf)
        return np.log(mixture_tokens(p, m, self.sd_len, self.point_quantile, big))

    def predict(self, queries: Sequence) -> list[tuple[int, int]]:
        """(point, upper) per query (a LengthQuery), both within [1, max_new_tokens]."""
        return [(point, upper) for point, upper, _ in self.estimates(queries)]

    def estimates(self, queries: Sequence) -> list[tuple[int, int, int]]:
        """(point, upper, mean) per query, from one pass over the prompts (their features are
        most of the cost: 0.25 s a pass on 1,000 rows). The mean is E[min(X, max_new_tokens)],
        rounded, within [1, max_new_tokens]: the expected length, what sums of lengths (the
        job's time) want."""
        if not queries:
            return []
        p, m = self.parts(queries)
        caps = np.array([max(int(q.max_new_tokens), 1) for q in queries], dtype=np.float64)
        point = mixture_tokens(p, m, self.sd_len, self.point_quantile, caps, self.tie_break)
        upper = mixture_tokens(p, m, self.sd_len, self.upper_quantile, caps)
        mean = np.clip(mixture_mean(p, m, self.sd_len, caps), 1.0, caps)
        out = []
        for pt, up, mu, cap in zip(point, upper, mean, caps, strict=True):
            tok = int(min(max(round(float(pt)), 1), cap))
            out.append((tok, int(min(max(round(float(up)), tok), cap)), int(round(float(mu)))))
        return out

    def features(self) -> list[str]:
        return [PRIOR_FEATURE] if self.use_prior else []

    def to_dict(self) -> dict:
        head = 1 + int(self.use_prior)
        d = {
            "kind": "two-part", "features": self.features(),
            "coef_hit": rounded_list(self.coef_hit[:head]), "coef_len": rounded_list(self.coef_len[:head]),
            "sd_len": round(float(self.sd_len), 6), "point_quantile": self.point_quantile,
            "upper_quantile": self.upper_quantile, "tie_break": self.tie_break,
            "hash_dim": int(self.hash_dim),
            "hash_hit": {str(i): v for i, v in enumerate(rounded_list(self.coef_hit[head:])) if v},
            "hash_len": {str(i): v for i, v in enumerate(rounded_list(self.coef_len[head:])) if v},
        }
        if self.use_prior:
            d["prior_id"] = prior_id()
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> TwoPartLengthModel:
        use_prior = PRIOR_FEATURE in d["features"]
        if list(d["features"]) != ([PRIOR_FEATURE] if use_prior else []):
            raise ValueError("its feature list differs from this version of uellm; retrain it")
        if use_prior and d.get("prior_id") != prior_id():
            raise ValueError("it was trained on another `prompt` prior; retrain it")
        dim = int(d.get("hash_dim", 0))

        def coefs(head: list, sparse: Mapping) -> np.ndarray:
            h = np.zeros(dim)
            for k, v in sparse.items():
                h[int(k)] = float(v)
            return np.concatenate([np.asarray(head, dtype=np.float64), h])

        return cls(
            coef_hit=coefs(d["coef_hit"], d.get("hash_hit", {})),
            coef_len=coefs(d["coef_len"], d.get("hash_len", {})),
            sd_len=float(d["sd_len"]), point_quantile=float(d["point_quantile"]),
            upper_quantile=float(d.get("upper_quantile", 0.9)),
            tie_break=float(d.get("tie_break", 0.0)), hash_dim=dim, use_prior=use_prior,
        )


@dataclass(slots=True, frozen=True)
class TwoPartConfig:
    """One candidate of the two-part model's cross-validation."""

    hashed: bool
    l2_hit: float
    l2_len: float
    point_quantile: float
    tie_break: float


# The candidates cross-validated by fit_two_part. Prior-only models have two free parameters per
# part, so their penalty hardly matters; hashed models need strong penalties at a few hundred rows.
TWO_PART_GRID: tuple[TwoPartConfig, ...] = tuple(
    TwoPartConfig(h, lh, ll, q, c)
    for h, lh, ll in [(False, 1.0, 1.0)] + [(True, a, b) for a in (100.0, 300.0, 1000.0)
                                            for b in (300.0, 1000.0)]
    for q in (0.4, 0.45, 0.5) for c in (0.0, 0.02, 0.05)
)
# CV selection: the candidate that most surely beats `prompt` on both measures, i.e. the largest
# min(tau gain / TAU_UNIT, relative MAE gain / MAE_UNIT). The units are roughly one standard
# error of each difference on a ~125-row test split (tau 0.03, MAE 5%), so neither measure is
# traded away for the other.
TAU_UNIT, MAE_UNIT = 0.03, 0.05


@dataclass(slots=True)
class TwoPartFit:
    model: TwoPartLengthModel
    config: TwoPartConfig
    cv_mae: float
    cv_tau: float
    cv_prompt_mae: float
    cv_prompt_tau: float


def fit_parts(a: np.ndarray, hit: np.ndarray, logtok: np.ndarray, cfg: TwoPartConfig,
              n_prior: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Both parts on design `a` (its first n_prior columns are the prior): (logistic weights
    of P(cut), ridge weights of log length of the stopped rows, residual sd). Pure numpy."""
    pen = np.ones(a.shape[1])
    pen[:n_prior] = PRIOR_PENALTY
    w_hit = _logistic(a, hit.astype(np.float64), cfg.l2_hit, pen)
    stop = ~hit
    if stop.sum() >= 3:
        w_len = _ridge_fit(a[stop], logtok[stop], cfg.l2_len, pen)
        resid = logtok[stop] - (w_len[0] + a[stop] @ w_len[1:])
        sd = max(float(np.std(resid)), 0.05)
    else:  # (almost) everything was cut: the stopped length is a guess
        w_len = np.zeros(a.shape[1] + 1)
        w_len[0] = float(np.mean(logtok))
        sd = 0.5
    return w_hit, w_len, sd


def _tau_mae(point: np.ndarray, tokens: np.ndarray) -> tuple[float, float]:
    tau = lf.kendall_tau_b(point, tokens)
    return (0.0 if math.isnan(tau) else tau), float(np.mean(np.abs(point - tokens)))


def fit_two_part(queries: Sequence, tokens: np.ndarray, censored: np.ndarray, *,
                 hash_dim: int = 1024, use_prior: bool = True, upper_quantile: float = 0.9,
                 grid: Sequence[TwoPartConfig] | None = None, folds: int = 5, repeats: int = 2,
                 seed: int = 0) -> TwoPartFit:
    """Fit a TwoPartLengthModel, choosing its configuration by repeated K-fold CV (see
    TAU_UNIT); then refit the chosen configuration on all rows."""
    tokens = np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)
    hit = np.asarray(censored, dtype=bool)
    caps = np.array([max(q.max_new_tokens, 1) for q in queries], dtype=np.float64)
    logtok = np.log(tokens)
    n = tokens.size
    prior = prompt_log_tokens(queries)[:, None] if use_prior else np.zeros((n, 0))
    hashed = (TWO_PART_HASH_SCALE * np.stack([lf.hashed_features(q.text, hash_dim)
                                              for q in queries]) if hash_dim
              else np.zeros((n, 0)))
    cands = [c for c in (grid or TWO_PART_GRID) if hash_dim or not c.hashed]
    if not use_prior and not hash_dim:
        cands = [c for c in cands if not c.hashed]

    def design(cfg: TwoPartConfig) -> np.ndarray:
        return np.hstack([prior, hashed]) if cfg.hashed else prior

    prompt_pt = np.clip(np.round(np.exp(prompt_log_tokens(queries))), 1, caps)
    p_tau, p_mae = _tau_mae(prompt_pt, tokens)
    k = max(2, min(folds, n // 2))
    # out-of-fold (p, m, sd) per model part configuration, per repeat
    scores: dict[TwoPartConfig, list[tuple[float, float]]] = {c: [] for c in cands}
    parts_keys = sorted({(c.hashed, c.l2_hit, c.l2_len) for c in cands})
    for r in range(repeats):
        fold_of = np.random.default_rng(seed + r).permutation(n) % k
        oof = {key: (np.zeros(n), np.zeros(n), np.zeros(n)) for key in parts_keys}
        for f in range(k):
            tr, te = fold_of != f, fold_of == f
            for key in parts_keys:
                cfg = TwoPartConfig(key[0], key[1], key[2], 0.5, 0.0)
                a = design(cfg)
                w_hit, w_len, sd = fit_parts(a[tr], hit[tr], logtok[tr], cfg, prior.shape[1])
                z = w_hit[0] + a[te] @ w_hit[1:]
                oof[key][0][te] = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
                oof[key][1][te] = w_len[0] + a[te] @ w_len[1:]
                oof[key][2][te] = sd
        for cfg in cands:
            p, m, sd = oof[(cfg.hashed, cfg.l2_hit, cfg.l2_len)]
            pt = np.zeros(n)
            for s in np.unique(sd):  # one sd per fold
                idx = sd == s
                pt[idx] = mixture_tokens(p[idx], m[idx], float(s), cfg.point_quantile, caps[idx],
                                         cfg.tie_break)
            scores[cfg].append(_tau_mae(np.clip(np.round(pt), 1, caps), tokens))

    def margin(cfg: TwoPartConfig) -> float:
        tau, mae = np.mean(scores[cfg], axis=0)
        return min((tau - p_tau) / TAU_UNIT, (p_mae - mae) / max(p_mae, 1e-9) / MAE_UNIT)

    best = max(cands, key=margin)
    a = design(best)
    w_hit, w_len, sd = fit_parts(a, hit, logtok, best, prior.shape[1])
    hd = hash_dim if best.hashed else 0
    if not best.hashed:  # no hashed block: store only the prior column
        w_hit, w_len = w_hit[: 1 + prior.shape[1]], w_len[: 1 + prior.shape[1]]
    model = TwoPartLengthModel(
        coef_hit=w_hit, coef_len=w_len, sd_len=sd, point_quantile=best.point_quantile,
        upper_quantile=upper_quantile, tie_break=best.tie_break, hash_dim=hd,
        use_prior=use_prior,
    )
    cv_tau, cv_mae = np.mean(scores[best], axis=0)
    return TwoPartFit(model=model, config=best, cv_mae=float(cv_mae), cv_tau=float(cv_tau),
                      cv_prompt_mae=p_mae, cv_prompt_tau=p_tau)
