"""Output-length predictors behind one interface, their registry, training and storage.

Predictors (all give a point estimate and an upper quantile, capped at max_new_tokens, >= 1):
- `auto` (the default): the model's `history` predictor when it has one, else `prompt`; rows
  whose prompt states a length ("100 words") get what the model wrote for such rows in its past
  runs, once there are enough (length_requests.py, RequestAware).
- `cap`: every row generates its full budget (a pessimistic bound, blind to which rows are
  short: it cannot tell which rows to give up when a job is overloaded).
- `prompt`: fixed linear model of log(tokens) on prompt features (length, question words,
  requested format and length), fitted once on the natural answer lengths of the AlpacaEval dev
  prompts (reference models, see docs/lengths.md); no training per user.
- `history`: trained on past runs of the *served* model. Default method "two-part": P(the row
  runs to its budget) by logistic regression plus log(length | it stopped) by ridge, on the
  `prompt` estimate and (when cross-validation keeps them) hashed words/bigrams; the point is a
  quantile of that mixture. Method "linear": the older censored (Tobit EM) ridge regression of
  log(tokens). Stored per model under cache_dir()/predictors/.
- `fitted`: a `history` model shipped for the default model (smollm2-135m), trained on its own
  greedy outputs; `history` falls back to it for that model when the user has trained none.
The linear model, PROMPT_MODEL and fitting live in length_fit.py, the two-part model in
length_two_part.py, features and measures in length_features.py, reading records from files in
length_io.py (from the history DB: store.py).
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

from uellm_cli.config import DEFAULT_MODEL
from uellm_cli.errors import ConfigError, InputError
from uellm_cli.jobs.durable import atomic_write_json
from uellm_cli.jobs.schema import messages_text
from uellm_cli.paths import cache_dir, home_dir
from uellm_cli.profile import length_features as lf
from uellm_cli.profile.length_fit import (  # noqa: F401 - PROMPT_MODEL re-exported
    PROMPT_MODEL,
    LinearLengthModel,
    fit_linear,
    prompt_predict,
)
from uellm_cli.profile.length_requests import RequestFit, load_request_fit
from uellm_cli.profile.length_two_part import TwoPartConfig, TwoPartLengthModel, fit_two_part

_FITTED_FILE = f"{DEFAULT_MODEL}-lengths.json"


@dataclass(slots=True, frozen=True)
class LengthPrediction:
    """Predicted output tokens, capped at the row's max_new_tokens: `tokens` (the point, what
    the row most likely needs: orders rows and judges their deadlines), `upper` (an upper
    quantile, for memory) and `mean` (the expected length, where lengths add up into the job's
    time; None: predictors without a distribution of lengths, whose point serves)."""

    tokens: int
    upper: int
    mean: int | None = None


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


# ---- `prompt`: fixed coefficients (length_fit.PROMPT_MODEL) --------------------------------


class PromptPredictor:
    """Prompt features -> natural answer length, the same for every model (no training).
    Coefficients: length_fit.PROMPT_MODEL; stated lengths override them (prompt_log_tokens)."""

    name = "prompt"

    def predict(self, queries: list[LengthQuery]) -> list[LengthPrediction]:
        return [LengthPrediction(t, u) for t, u in prompt_predict(queries)]


# ---- stated lengths, as this model answers them (length_requests.py) ------------------------


@dataclass(slots=True)
class RequestAware:
    """`base`, except for rows whose prompt states a length: those get what the served model
    wrote for such requests in past runs (`fit`), not the base's request_factor x the request."""

    base: Predictor
    fit: RequestFit

    @property
    def name(self) -> str:
        return f"{self.base.name}, stated lengths from {self.fit.rows} past rows"

    def predict(self, queries: list[LengthQuery]) -> list[LengthPrediction]:
        out = self.base.predict(queries)
        for i, q in enumerate(queries):
            requested = lf.requested_tokens(q.text)
            if requested is not None:
                out[i] = LengthPrediction(*self.fit.predict(requested, q.max_new_tokens))
        return out


# ---- `history` / `fitted` ------------------------------------------------------------------


@dataclass(slots=True)
class HistoryPredictor:
    """A length model (two-part or linear) trained on one served model's past outputs, with its
    provenance. cv_tau/cv_prompt_*: cross-validated Kendall tau of the model and the `prompt`
    baseline's numbers on the same rows (two-part only)."""

    model_name: str
    model: LinearLengthModel | TwoPartLengthModel
    n_train: int
    n_censored: int
    l2: float
    quantile: float
    cv_mae: float | None = None
    source: str = ""
    name: str = "history"
    method: str = "linear"
    cv_tau: float | None = None
    cv_prompt_mae: float | None = None
    cv_prompt_tau: float | None = None
    config: dict | None = None

    def predict(self, queries: list[LengthQuery]) -> list[LengthPrediction]:
        if not isinstance(self.model, TwoPartLengthModel):
            return [LengthPrediction(t, u) for t, u in self.model.predict(queries)]
        return [LengthPrediction(t, u, mean) for t, u, mean in self.model.estimates(queries)]

    def to_dict(self) -> dict:
        return {
            "kind": "uellm-length-predictor", "version": 1, "model_name": self.model_name,
            "n_train": self.n_train, "n_censored": self.n_censored, "l2": self.l2,
            "quantile": self.quantile, "cv_mae": self.cv_mae, "source": self.source,
            "method": self.method, "cv_tau": self.cv_tau, "cv_prompt_mae": self.cv_prompt_mae,
            "cv_prompt_tau": self.cv_prompt_tau, "config": self.config,
            "model": self.model.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping, *, name: str = "history") -> HistoryPredictor:
        if d.get("kind") != "uellm-length-predictor":
            raise ValueError("not a uellm length predictor")
        two_part = d["model"].get("kind") == "two-part"
        model = (TwoPartLengthModel.from_dict(d["model"]) if two_part
                 else LinearLengthModel.from_dict(d["model"]))
        return cls(
            model_name=str(d["model_name"]), model=model,
            n_train=int(d["n_train"]), n_censored=int(d["n_censored"]), l2=float(d["l2"]),
            quantile=float(d["quantile"]), cv_mae=d.get("cv_mae"), source=str(d.get("source", "")),
            name=name, method="two-part" if two_part else "linear", cv_tau=d.get("cv_tau"),
            cv_prompt_mae=d.get("cv_prompt_mae"), cv_prompt_tau=d.get("cv_prompt_tau"),
            config=d.get("config"),
        )


def train_history(
    records: Iterable[Mapping], *, model_name: str, hash_dim: int = 1024, quantile: float = 0.9,
    l2: float | None = None, use_prior: bool = True, seed: int = 0, method: str = "two-part",
    grid: Sequence[TwoPartConfig] | None = None,
) -> HistoryPredictor:
    """Fit a `history` predictor on finished rows of `model_name`.

    records: dicts with `prompt` (or `messages`/`text`), `output_tokens`, and when known
    `prompt_tokens`, `max_new_tokens`, `finish_reason`, `status` (see `clean_records`).
    method "two-part" (default): P(cut at the budget) + length if it stops, configuration chosen
    by repeated 5-fold CV among `grid` (default length_two_part.TWO_PART_GRID) as the one that most
    surely beats `prompt` on both Kendall tau and MAE; l2 (if given) fixes both penalties of the
    hashed candidates. method "linear": censored ridge on log(tokens), l2=None picks the ridge
    strength by CV (MAE). use_prior: start from the `prompt` estimate (a feature penalised 100x
    less than the others); see length_fit.py.
    """
    rows = clean_records(records)
    if len(rows) < 10:
        raise InputError(f"need at least 10 finished rows with a prompt to train, got {len(rows)}")
    queries = [r.query for r in rows]
    tokens = np.array([r.output_tokens for r in rows], dtype=np.float64)
    censored = np.array([r.censored for r in rows])
    n_cens = int(censored.sum())
    if method == "two-part":
        if l2 is not None and grid is None:
            from uellm_cli.profile.length_two_part import TWO_PART_GRID

            grid = [TwoPartConfig(c.hashed, l2, l2, c.point_quantile, c.tie_break)
                    if c.hashed else c for c in TWO_PART_GRID]
        tp = fit_two_part(queries, tokens, censored, hash_dim=hash_dim, use_prior=use_prior,
                          upper_quantile=quantile, grid=grid, seed=seed)
        cfg = tp.config
        return HistoryPredictor(
            model_name=model_name, model=tp.model, n_train=len(rows), n_censored=n_cens,
            l2=cfg.l2_hit if cfg.hashed else 0.0, quantile=quantile, cv_mae=tp.cv_mae,
            method="two-part", cv_tau=tp.cv_tau, cv_prompt_mae=tp.cv_prompt_mae,
            cv_prompt_tau=tp.cv_prompt_tau,
            config={"hashed": cfg.hashed, "l2_hit": cfg.l2_hit, "l2_len": cfg.l2_len,
                    "point_quantile": cfg.point_quantile, "tie_break": cfg.tie_break},
        )
    if method != "linear":
        raise ConfigError(f"unknown length training method {method!r}; known: two-part, linear")
    fit = fit_linear(
        queries, tokens, censored, hash_dim=hash_dim, quantile=quantile, l2=l2,
        use_prior=use_prior, seed=seed,
    )
    return HistoryPredictor(
        model_name=model_name, model=fit.model, n_train=len(rows), n_censored=n_cens,
        l2=fit.l2, quantile=quantile, cv_mae=fit.cv_mae, method="linear",
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
        return messages_text(list(msgs))
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
    return DEFAULT_MODEL in Path(str(model_name)).name.lower() or model_name == DEFAULT_MODEL


def predictor_path(model_name: str) -> Path:
    """cache_dir()/predictors/<model-name>.json (unsafe characters replaced by '_')."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name.strip().strip("/")) or "model"
    return cache_dir() / "predictors" / f"{safe}.json"


def requests_path(model_name: str) -> Path:
    """Where the model's rows that stated a length are recorded (length_requests.py): with the
    other measurements runs learn from, home_dir()/profiles/lengths/<model-name>--requests.jsonl."""
    return home_dir() / "profiles" / "lengths" / f"{predictor_path(model_name).stem}--requests.jsonl"


def save_predictor(pred: HistoryPredictor, path: Path | None = None) -> Path:
    """Write `pred` as JSON (default: predictor_path(pred.model_name)); returns the path."""
    return atomic_write_json(path or predictor_path(pred.model_name), pred.to_dict(), indent=None)


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


def _auto(model_name: str | None) -> Predictor:
    """The default: the model's own `history` predictor when it has one (trained by the user,
    or shipped for the default model), else the `prompt` model, which needs no training; for
    rows that state a length, what the model wrote for such rows in past runs, once known."""
    pred = load_predictor_for(model_name) if model_name else None
    base: Predictor = pred if pred is not None else PromptPredictor()
    fit = load_request_fit(requests_path(model_name)) if model_name else None
    return RequestAware(base, fit) if fit is not None else base


PREDICTORS: dict[str, Callable[[str | None], Predictor]] = {
    "auto": _auto,
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
