"""Output-length predictors behind one interface.

SKELETON: the contract (LengthPrediction, the Predictor protocol, and `cap`). The `prompt` and
`history` predictors and the registry follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
