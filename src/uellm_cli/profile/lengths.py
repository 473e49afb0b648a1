"""Output-length predictors behind one interface, their registry, training and storage.

Predictors (all give a point estimate and an upper quantile, capped at max_new_tokens, >= 1):
- `cap`: every row generates its full budget (the safe default).
- `prompt`: fixed linear model of log(tokens) on prompt features (length, question words,
  requested format and length), fitted once on the natural answer lengths of the AlpacaEval dev
  prompts (reference models, see docs/lengths.md); no training per user.
- `history`: the same features plus a hashed bag of words/bigrams, ridge regression on
  log(output tokens) of past runs of the *served* model; outputs cut at max_new_tokens are
  right-censored and handled by Tobit EM. Stored per model under cache_dir()/predictors/.
- `fitted`: a `history` model shipped for the default model (smollm2-135m), trained on its own
  greedy outputs; `history` falls back to it for that model when the user has trained none.
Fitting code lives in length_fit.py; feature extraction and measures in length_features.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from uellm_cli.errors import ConfigError, InputError
from uellm_cli.paths import cache_dir
from uellm_cli.profile import length_features as lf
from uellm_cli.profile.length_fit import LinearLengthModel, clip_tokens, fit_linear

DEFAULT_MODEL = "smollm2-135m"
_FITTED_FILE = "smollm2-135m-lengths.json"


@dataclass(slots=True, frozen=True)
class LengthPrediction:
    """Predicted output tokens: `tokens` (point estimate, used for time) and `upper` (an upper
    quantile, used for memory). Both are capped at the row's max_new_tokens."""

    tokens: int
    upper: int


@dataclass(slots=True, frozen=True)
class LengthQuery:
    """What a predictor may look at."""

    text: str
    prompt_tokens: int
    max_new_tokens: int


class Predictor(Protocol):
    name: str

    def predict(self, queries: list[LengthQuery]) -> list[LengthPrediction]: ...


class CapPredictor:
    """The safe default: every row generates its full budget."""

    name = "cap"

    def predict(self, queries: list[LengthQuery]) -> list[LengthPrediction]:
        return [LengthPrediction(q.max_new_tokens, q.max_new_tokens) for q in queries]


def _predict(model: LinearLengthModel, queries: Sequence[LengthQuery]) -> list[LengthPrediction]:
    return [LengthPrediction(t, u) for t, u in model.predict(queries)]


# ---- `prompt`: fixed coefficients --------------------------------------------------------

# Fitted once by `bench/gen_length_data.py --fit` on the train split (70%, hash of id; 355
# prompts) of ../shared/workloads/alpaca_eval_dev.jsonl. Target: mean over the six reference
# models of log(answer tokens), tokens = words x 1.4374 (SmolLM2 tokens per whitespace word on the
# reference texts). Numeric features only (order: length_features.NUMERIC_FEATURES), ridge l2 = 1
# chosen by 5-fold CV. prompt_tokens was held at 0 in the fit (its scale depends on each model's
# chat template), so its weight is 0 and prompt length enters through log_words.
# request_factor: median answer/request ratio over the 9 train prompts that state a length.
PROMPT_MODEL: dict = {
    "features": list(lf.NUMERIC_FEATURES),
    "numeric_mean": [
        0.0, 3.060522, 0.38448, 0.498592, 0.287324, 0.152113, 0.109859, 0.025352, 0.028169,
        0.059155, 0.157746, 0.101408, 0.016901, 0.112676, 0.084507, 0.011268, 0.050704, 0.04507,
        0.070423, 0.160563, 0.025352, 0.11418,
    ],
    "numeric_scale": [
        1.0, 0.801839, 0.628651, 0.499998, 0.452514, 0.35913, 0.312714, 0.157192, 0.165455,
        0.235914, 0.364503, 0.301869, 0.128902, 0.316196, 0.278147, 0.105549, 0.219393, 0.207459,
        0.255858, 0.367128, 0.157192, 0.715421,
    ],
    "coef_numeric": [
        0.0, 0.178289, -0.052244, -0.063063, -0.34444, 0.059644, 0.193495, 0.074621, -0.02004,
        -5e-06, 0.155879, 0.115723, 0.019561, 0.119933, -0.068806, 0.024359, -0.069146, -0.081524,
        -0.138923, 0.031946, -0.262177, 0.236204,
    ],
    "intercept": 5.328321,
    "median_offset": 0.098132,
    "upper_offset": 0.676151,
    "hash_dim": 0,
    "request_factor": 1.4342,
}


class PromptPredictor:
    """Prompt features -> natural answer length, the same for every model (no training).

    A prompt that states its length ("in 3 sentences", "100 words", "one word", "yes or no")
    gets request_factor x the requested tokens instead of the regression: such requests are too
    rare in any dev set for a regression to learn, and too informative to ignore.
    """

    name = "prompt"

    def __init__(self, model: LinearLengthModel | None = None, request_factor: float | None = None):
        self.model = model or LinearLengthModel.from_dict(PROMPT_MODEL)
        self.request_factor = (request_factor if request_factor is not None
                               else float(PROMPT_MODEL.get("request_factor", 1.0)))

    def predict(self, queries: list[LengthQuery]) -> list[LengthPrediction]:
        out = _predict(self.model, queries)
        spread = self.model.upper_offset - self.model.median_offset
        for i, q in enumerate(queries):
            req = lf.requested_tokens(q.text)
            if req is not None:
                cap = max(int(q.max_new_tokens), 1)
                log_point = math.log(max(req * self.request_factor, 1.0))
                tokens = clip_tokens(log_point, 1, cap)
                out[i] = LengthPrediction(tokens, clip_tokens(log_point + spread, tokens, cap))
        return out


# ---- `history` / `fitted` ------------------------------------------------------------------


@dataclass(slots=True)
class HistoryPredictor:
    """A LinearLengthModel trained on one served model's past outputs, with its provenance."""

    model_name: str
    model: LinearLengthModel
    n_train: int
    n_censored: int
    l2: float
    quantile: float
    cv_mae: float | None = None
    source: str = ""
    name: str = "history"

    def predict(self, queries: list[LengthQuery]) -> list[LengthPrediction]:
        return _predict(self.model, queries)

    def to_dict(self) -> dict:
        return {
            "kind": "uellm-length-predictor", "version": 1, "model_name": self.model_name,
            "n_train": self.n_train, "n_censored": self.n_censored, "l2": self.l2,
            "quantile": self.quantile, "cv_mae": self.cv_mae, "source": self.source,
            "model": self.model.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping, *, name: str = "history") -> HistoryPredictor:
        if d.get("kind") != "uellm-length-predictor":
            raise ValueError("not a uellm length predictor")
        return cls(
            model_name=str(d["model_name"]), model=LinearLengthModel.from_dict(d["model"]),
            n_train=int(d["n_train"]), n_censored=int(d["n_censored"]), l2=float(d["l2"]),
            quantile=float(d["quantile"]), cv_mae=d.get("cv_mae"), source=str(d.get("source", "")),
            name=name,
        )


def train_history(
    records: Iterable[Mapping], *, model_name: str, hash_dim: int = 1024, quantile: float = 0.9,
    l2: float | None = None, seed: int = 0,
) -> HistoryPredictor:
    """Fit a `history` predictor on finished rows of `model_name`.

    records: dicts with `prompt` (or `messages`/`text`), `output_tokens`, and when known
    `prompt_tokens`, `max_new_tokens`, `finish_reason`, `status` (see `clean_records`).
    l2=None picks the ridge strength by 5-fold cross-validation (MAE in tokens).
    """
    rows = clean_records(records)
    if len(rows) < 10:
        raise InputError(f"need at least 10 finished rows with a prompt to train, got {len(rows)}")
    queries = [r.query for r in rows]
    fit = fit_linear(
        queries, np.array([r.output_tokens for r in rows], dtype=np.float64),
        np.array([r.censored for r in rows]), hash_dim=hash_dim, quantile=quantile, l2=l2,
        seed=seed,
    )
    return HistoryPredictor(
        model_name=model_name, model=fit.model, n_train=len(rows),
        n_censored=int(sum(r.censored for r in rows)), l2=fit.l2, quantile=quantile,
        cv_mae=fit.cv_mae,
    )


# ---- records ------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class LengthRecord:
    """One finished row as the trainers and `evaluate` see it."""

    query: LengthQuery
    output_tokens: int
    censored: bool  # hit max_new_tokens: the natural length is >= output_tokens


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def record_text(rec: Mapping) -> str | None:
    """The prompt of a record: `prompt`, else the contents of `messages`, else `text`."""
    p = rec.get("prompt")
    if isinstance(p, str):
        return p
    msgs = rec.get("messages")
    if isinstance(msgs, str):
        try:
            msgs = json.loads(msgs)
        except ValueError:
            msgs = None
    if isinstance(msgs, list | tuple) and msgs:
        return "\n".join(str(m.get("content", "")) for m in msgs if isinstance(m, Mapping))
    t = rec.get("text")
    return t if isinstance(t, str) else None


def clean_records(records: Iterable[Mapping], *, default_max_new_tokens: int | None = None
                  ) -> list[LengthRecord]:
    """Keep finished rows with a prompt and output_tokens; fill what is missing.

    Rows with a `status` other than "ok" are dropped. Missing prompt_tokens: chars / 4.
    Missing max_new_tokens: `default_max_new_tokens`, else the largest output_tokens seen
    (so a row that reached it counts as cut). censored = finish_reason == "length" or
    output_tokens >= max_new_tokens.
    """
    raw = [r for r in records if r.get("status") in (None, "ok")]
    kept = [(r, record_text(r), _num(r.get("output_tokens"))) for r in raw]
    kept = [(r, t, o) for r, t, o in kept if t is not None and o is not None]
    if not kept:
        return []
    fallback = default_max_new_tokens or int(max(o for _, _, o in kept))
    out = []
    for r, text, o in kept:
        out_tokens = max(int(o), 1)
        cap = _num(r.get("max_new_tokens"))
        cap = int(cap) if cap else fallback
        cap = max(cap, out_tokens)
        pt = _num(r.get("prompt_tokens"))
        pt = int(pt) if pt is not None else max(1, round(len(text) / 4))
        censored = r.get("finish_reason") == "length" or out_tokens >= cap
        out.append(LengthRecord(LengthQuery(text, pt, cap), out_tokens, censored))
    return out


# ---- evaluation ---------------------------------------------------------------------------


def evaluate(predictors: Sequence[Predictor] | Mapping[str, Predictor],
             records: Iterable[Mapping] | Sequence[LengthRecord]) -> dict:
    """Per predictor: MAE (tokens), bucket accuracy (power-of-two buckets), Kendall tau-b of the
    point estimate against actual output tokens, and how often actual <= upper (coverage).

    Returns {name: {"n", "mae", "bucket_accuracy", "kendall_tau", "upper_coverage",
    "mean_tokens", "mean_upper"}}; kendall_tau is None when undefined (constant predictions).
    """
    recs = list(records)
    rows = recs if recs and isinstance(recs[0], LengthRecord) else clean_records(recs)
    named = dict(predictors) if isinstance(predictors, Mapping) else {p.name: p for p in predictors}
    actual = np.array([r.output_tokens for r in rows], dtype=np.float64)
    queries = [r.query for r in rows]
    result: dict = {}
    for name, pred in named.items():
        preds = pred.predict(queries) if rows else []
        tok = np.array([p.tokens for p in preds], dtype=np.float64)
        up = np.array([p.upper for p in preds], dtype=np.float64)
        tau = lf.kendall_tau_b(tok, actual) if rows else float("nan")
        result[name] = {
            "n": len(rows),
            "mae": float(np.mean(np.abs(tok - actual))) if rows else None,
            "bucket_accuracy": lf.bucket_accuracy(tok, actual) if rows else None,
            "kendall_tau": None if math.isnan(tau) else float(tau),
            "upper_coverage": float(np.mean(actual <= up)) if rows else None,
            "mean_tokens": float(np.mean(tok)) if rows else None,
            "mean_upper": float(np.mean(up)) if rows else None,
        }
    return result


# ---- storage ------------------------------------------------------------------------------


def is_default_model(model_name: str) -> bool:
    """True for the default model under any of its names (alias, hub id, GGUF file, folder)."""
    return "smollm2-135m" in Path(str(model_name)).name.lower() or model_name == DEFAULT_MODEL


def predictor_path(model_name: str) -> Path:
    """cache_dir()/predictors/<model-name>.json (unsafe characters replaced by '_')."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name.strip().strip("/")) or "model"
    return cache_dir() / "predictors" / f"{safe}.json"


def save_predictor(pred: HistoryPredictor, path: Path | None = None) -> Path:
    """Write `pred` as JSON (default: predictor_path(pred.model_name)); returns the path."""
    path = path or predictor_path(pred.model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(pred.to_dict(), separators=(",", ":")) + "\n")
    tmp.replace(path)
    return path


def load_predictor_file(path: Path, *, name: str = "history") -> HistoryPredictor:
    try:
        return HistoryPredictor.from_dict(json.loads(Path(path).read_text()), name=name)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read length predictor {path}: {exc}") from None


def load_fitted() -> HistoryPredictor:
    """The predictor shipped for the default model (src/uellm_cli/data/)."""
    from importlib.resources import files

    res = files("uellm_cli").joinpath("data", _FITTED_FILE)
    try:
        return HistoryPredictor.from_dict(json.loads(res.read_text()), name="fitted")
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"the shipped length predictor is unreadable: {exc}") from None


def load_predictor_for(model_name: str) -> HistoryPredictor | None:
    """The user's trained predictor for `model_name`, else the shipped one for the default
    model, else None."""
    path = predictor_path(model_name)
    if path.exists():
        return load_predictor_file(path)
    if is_default_model(model_name):
        pred = load_fitted()
        pred.name = "history"
        return pred
    return None


def train_from_records(records: Iterable[Mapping], *, model_name: str, save: bool = True,
                       **kwargs) -> tuple[HistoryPredictor, Path | None]:
    """Train a `history` predictor and (by default) store it for `model_name`."""
    pred = train_history(records, model_name=model_name, **kwargs)
    return pred, (save_predictor(pred) if save else None)


# ---- registry -----------------------------------------------------------------------------


def _history(model_name: str | None) -> Predictor:
    if not model_name:
        raise ConfigError("the `history` length predictor needs a model name")
    pred = load_predictor_for(model_name)
    if pred is None:
        raise ConfigError(
            f"no length history for model {model_name!r}",
            hint="train one: uellm profile lengths --train results.parquet --job JOB --model M",
        )
    return pred


PREDICTORS: dict[str, Callable[[str | None], Predictor]] = {
    "cap": lambda _model: CapPredictor(),
    "prompt": lambda _model: PromptPredictor(),
    "history": _history,
    "fitted": lambda _model: load_fitted(),
}


def get_predictor(name: str, *, model_name: str | None = None) -> Predictor:
    """The predictor registered as `name` (for `history`: the one of `model_name`)."""
    factory = PREDICTORS.get(name)
    if factory is None:
        raise ConfigError(
            f"unknown length predictor {name!r}; known: {', '.join(sorted(PREDICTORS))}"
        )
    return factory(model_name)
