"""Prompt features for the length predictors, and the measures they are judged by.

Pure: no torch, no I/O, no clock. Two kinds of features:
- numeric: a short, named vector (prompt length, question words, requested format, requested
  length such as "in 3 sentences" or "100 words"), shared by the `prompt` and `history` models;
- hashed: a bag of lowercased words and word bigrams hashed into a fixed number of signed
  buckets (stable crc32, not Python's salted hash), L2-normalised, used by `history` only.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib

import numpy as np

_WORD = re.compile(r"[a-z0-9']+|[^\sa-z0-9]")

# (name, pattern searched in the lowercased prompt). Order is the feature order: append only.
_FORMAT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("fmt_list", r"\blist\b|\bbullet|\bexamples?\b|\bideas\b|\bways\b|\btips\b|\bsteps\b"
                 r"|\btop \d+|\bname (?:some|a few|\d+)|\bsuggest|\brecommend"),
    ("fmt_long", r"\bessay\b|\barticle\b|\bstory\b|\bblog\b|\breport\b|\bletter\b|\bspeech\b"
                 r"|\bin detail\b|\bdetailed\b|\bcomprehensive\b|\bguide\b|\bplan\b|\boutline\b"
                 r"|\bscript\b|\bproposal\b"),
    ("fmt_short", r"\bshort\b|\bbrief(?:ly)?\b|\bconcise(?:ly)?\b|\bsuccinct|\btl;?dr\b"),
    ("fmt_explain", r"\bexplain|\bdescribe|\bdiscuss|\belaborate|\bcompare|\bdifferences?\b"
                    r"|\bpros and cons\b"),
    ("fmt_code", r"\bcode\b|\bfunction\b|\bprogram\b|\bpython\b|\bjavascript\b|\bsql\b|\bregex"
                 r"|\bimplement|\bc\+\+|\bjava\b|\bhtml\b|\bcss\b|\bbash\b|```|\bdef |\breturn\b"),
    ("fmt_poem", r"\bpoem|\bhaiku|\blimerick|\bsong\b|\blyrics\b|\brap\b|\bsonnet|\brhym"),
    ("fmt_rewrite", r"\brewrite|\bparaphrase|\bcorrect\b|\bproofread|\brephrase|\btranslat"
                    r"|\bsummar|\bedit\b|\bfix\b|\bimprove\b"),
    ("fmt_classify", r"\bclassify|\bcategori[sz]e|\bwhich of\b|\btrue or false\b|\bchoose\b"
                     r"|\bselect\b|\brate\b|\bsentiment\b|\bidentify\b|\bdetermine\b"),
    ("fmt_math", r"\bcalculate|\bsolve\b|\bcompute\b|\bhow many\b|\bhow much\b|\bequation"
                 r"|\bmath|\d+\s*[-+*/x^]\s*\d+"),
    ("fmt_creative", r"\bwrite\b|\bcreate\b|\bcompose\b|\bgenerate\b|\bdraft\b|\bimagine\b"
                     r"|\bpretend\b|\brole ?play"),
)
_QUESTION_STARTS: tuple[tuple[str, str], ...] = (
    ("q_what", r"^\W*what\b"),
    ("q_how", r"^\W*how\b"),
    ("q_why", r"^\W*why\b"),
    ("q_wh_other", r"^\W*(?:who|when|where|which)\b"),
    ("q_yes_no", r"^\W*(?:is|are|can|could|do|does|did|will|would|should|was|were|has|have)\b"),
)
_NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "a few": 3, "few": 3, "several": 4,
    "twenty": 20, "fifty": 50, "hundred": 100, "a hundred": 100,
}
# Tokens one unit of a requested length is worth (rough English averages; a SmolLM2 token is
# ~0.7 whitespace words on the AlpacaEval reference answers).
_UNIT_TOKENS = {
    "word": 1.4, "sentence": 25.0, "paragraph": 90.0, "line": 12.0, "page": 600.0,
    "character": 0.3, "item": 20.0, "example": 25.0, "idea": 25.0, "tip": 25.0, "way": 25.0,
    "point": 25.0, "step": 25.0, "reason": 25.0, "question": 20.0, "name": 5.0, "bullet": 20.0,
    "verse": 40.0, "stanza": 40.0,
}
# "a"/"an" only state a length for these units ("in a sentence"), not for "a way", "a word".
_A_UNITS = {"sentence", "paragraph", "page"}
_REQUEST = re.compile(
    r"\b(\d{1,4}|a few|a hundred|an?|one|single|two|three|four|five|six|seven|eight|nine|ten"
    r"|few|several|twenty|fifty|hundred)(?:\s*-\s*\d{1,4})?(?:\s+|-)(?:[a-z]+\s+)?("
    + "|".join(_UNIT_TOKENS) + r")s?\b"
)
_YES_NO = re.compile(r"\b(?:yes or no|true or false|yes/no)\b")

NUMERIC_FEATURES: tuple[str, ...] = (
    ("log_prompt_tokens", "log_words", "log_lines", "has_question_mark", "has_input_block")
    + tuple(n for n, _ in _QUESTION_STARTS)
    + tuple(n for n, _ in _FORMAT_PATTERNS)
    + ("has_length_request", "log_requested_tokens")
)
_COMPILED = [(n, re.compile(p)) for n, p in _QUESTION_STARTS + _FORMAT_PATTERNS]


def split_of(row_id: str, train_percent: int = 70) -> str:
    """'train' or 'test' from a stable hash of the row id (independent of file order)."""
    bucket = int(hashlib.sha256(row_id.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < train_percent else "test"


def requested_tokens(text: str) -> float | None:
    """Tokens the prompt asks for ("in 3 sentences", "100 words", "five tips", "yes or no"),
    or None. With several requests the largest wins: it is the one that bounds the answer.
    """
    low = text.lower()
    best: float | None = 4.0 if _YES_NO.search(low) else None
    for m in _REQUEST.finditer(low):
        raw, unit = m.group(1), m.group(2)
        if raw in ("a", "an") and unit not in _A_UNITS:
            continue
        count = float(raw) if raw.isdigit() else float(_NUMBER_WORDS.get(raw, 1))
        est = count * _UNIT_TOKENS[unit]
        best = est if best is None else max(best, est)
    return best


def numeric_features(text: str, prompt_tokens: int) -> np.ndarray:
    """The NUMERIC_FEATURES vector of one prompt (float64)."""
    low = text.lower()
    words = low.split()
    req = requested_tokens(text)
    vals = [
        math.log1p(max(prompt_tokens, 0)),
        math.log1p(len(words)),
        math.log1p(text.count("\n")),
        1.0 if "?" in text else 0.0,
        1.0 if re.search(r":\s*\n|\n\s*\n|\"[^\"]{40,}\"", text) else 0.0,
    ]
    vals += [1.0 if rx.search(low) else 0.0 for _, rx in _COMPILED]
    vals += [1.0 if req is not None else 0.0, math.log1p(req) if req is not None else 0.0]
    return np.asarray(vals, dtype=np.float64)


def hashed_features(text: str, dim: int) -> np.ndarray:
    """Signed hashed bag of words + bigrams, L2-normalised (zeros for an empty prompt)."""
    out = np.zeros(dim, dtype=np.float64)
    if dim <= 0:
        return out
    toks = _WORD.findall(text.lower())
    grams = toks + [f"{a} {b}" for a, b in zip(toks, toks[1:], strict=False)]
    for g in grams:
        h = zlib.crc32(g.encode("utf-8"))
        out[h % dim] += 1.0 if (h >> 31) & 1 else -1.0
    norm = float(np.linalg.norm(out))
    return out / norm if norm > 0 else out


# ---- measures -----------------------------------------------------------------------------


def bucket_of(tokens: np.ndarray | int) -> np.ndarray:
    """Power-of-two bucket index as in S3/UELLM: [0,8)->0, [8,16)->1, [16,32)->2, ..."""
    t = np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)
    return np.maximum(np.floor(np.log2(t)).astype(np.int64) - 2, 0)


def bucket_accuracy(pred: np.ndarray, actual: np.ndarray) -> float:
    """Share of rows whose predicted and actual lengths fall in the same power-of-two bucket."""
    pred, actual = np.asarray(pred), np.asarray(actual)
    if pred.size == 0:
        return float("nan")
    return float(np.mean(bucket_of(pred) == bucket_of(actual)))


def _count_inversions(seq: list[float]) -> int:
    """Pairs i < j with seq[i] > seq[j] (strict), by merge sort: O(n log n)."""
    n = len(seq)
    if n < 2:
        return 0
    width, arr, inv = 1, list(seq), 0
    while width < n:
        out: list[float] = []
        for lo in range(0, n, 2 * width):
            left, right = arr[lo : lo + width], arr[lo + width : lo + 2 * width]
            i = j = 0
            while i < len(left) and j < len(right):
                if right[j] < left[i]:
                    out.append(right[j])
                    inv += len(left) - i
                    j += 1
                else:
                    out.append(left[i])
                    i += 1
            out.extend(left[i:])
            out.extend(right[j:])
        arr, width = out, width * 2
    return inv


def _tied_pairs(values: np.ndarray) -> int:
    _, counts = np.unique(values, return_counts=True, axis=0)
    return int(np.sum(counts * (counts - 1) // 2))


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (ties in either variable corrected), Knight's O(n log n) algorithm.

    NaN when either side is constant (e.g. `cap` predicts the same value for every row): a
    ranking of all-equal values says nothing, and 0 would flatter it as "uncorrelated".
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = x.size
    if n < 2:
        return float("nan")
    order = np.lexsort((y, x))
    total = n * (n - 1) // 2
    x_ties = _tied_pairs(x)
    y_ties = _tied_pairs(y)
    xy_ties = _tied_pairs(np.column_stack([x, y]))
    discordant = _count_inversions(y[order].tolist())
    denom = math.sqrt(float(total - x_ties) * float(total - y_ties))
    if denom == 0:
        return float("nan")
    return (total - x_ties - y_ties + xy_ties - 2 * discordant) / denom
