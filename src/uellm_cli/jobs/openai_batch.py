"""The OpenAI batch input format, mapped onto our own row fields.

A line is {custom_id, method, url, body}; we turn it into the record a JSONL row would be,
plus labels so errors name the user's fields ("body.max_tokens", not "max_new_tokens").
"""

from __future__ import annotations

from uellm_cli.jobs.fields import RowProblem, show
from uellm_cli.jobs.validate import FIELDS, RawRow

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
URLS = (CHAT_URL, COMPLETIONS_URL)
ENVELOPE = ("custom_id", "method", "url", "body")
# Same key as jobs.writers.OPENAI_URL_KEY: the writer answers /v1/completions lines as text
# completions; keys starting with "_" are internal and never written as columns.
OPENAI_URL_KEY = "_openai_url"
# Our extensions: may sit at the top level of a line or in its body.
METADATA = ("slo_s", "deadline", "priority")
_BODY_SAMPLING = ("temperature", "top_p", "seed", "stop")
_BODY_KNOWN = frozenset(
    {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "n", "stream",
     *_BODY_SAMPLING, *METADATA}
)


def is_openai_line(obj: object) -> bool:
    """True for a line with the four keys of the OpenAI batch envelope."""
    return isinstance(obj, dict) and all(k in obj for k in ENVELOPE)


def openai_raw_row(line: int, obj: dict) -> RawRow:
    """Map one OpenAI batch line; the first envelope problem rides along as raw.problem."""
    rec: dict = {}
    labels = {"id": "custom_id"}
    warnings: list[str] = []
    if "custom_id" in obj:
        rec["id"] = obj["custom_id"]
    for key, value in obj.items():
        if key in ENVELOPE or key in METADATA:
            continue
        if key in FIELDS:
            warnings.append(f"top-level {key} ignored: OpenAI batch lines carry it in body")
        else:
            rec[key] = value
    try:
        url = _envelope(obj)
        rec[OPENAI_URL_KEY] = url
        body = obj["body"]
        _content(body, url, rec, labels)
        _max_tokens(body, rec, labels)
        for key in _BODY_SAMPLING:
            if key in body:
                rec[key] = body[key]
                labels[key] = f"body.{key}"
        n = body.get("n")
        if n is not None and (isinstance(n, bool) or n != 1):
            raise RowProblem("invalid_field", "body.n", f"body.n must be 1 (one completion per line), got {show(n)}")
        _metadata(obj, body, rec, labels)
        ignored = sorted(k for k in body if k not in _BODY_KNOWN)
        if ignored:
            warnings.append(f"body fields ignored: {', '.join(ignored)}")
    except RowProblem as problem:
        return RawRow(line, rec, problem, labels, warnings)
    # a /v1/completions prompt is text to continue, not a user turn: no chat template
    return RawRow(line, rec, None, labels, warnings, raw_prompt=url == COMPLETIONS_URL)


def _envelope(obj: dict) -> str:
    for key in ("method", "url", "body"):
        if key not in obj or obj[key] is None:
            raise RowProblem("missing_field", key, f"OpenAI batch line has no {key}")
    method = obj["method"]
    if not isinstance(method, str) or method.strip().upper() != "POST":
        raise RowProblem("unsupported_method", "method", f"method must be POST, got {show(method)}")
    url = obj["url"]
    if not isinstance(url, str):
        raise RowProblem("invalid_field", "url", f"url must be a string, got {show(url)}")
    url = url.strip()
    if url not in URLS:
        raise RowProblem(
            "unsupported_url", "url",
            f"url {show(url)} is not supported; use {CHAT_URL} or {COMPLETIONS_URL}",
        )
    if not isinstance(obj["body"], dict):
        raise RowProblem("invalid_field", "body", f"body must be an object, got {show(obj['body'])}")
    return url


def _content(body: dict, url: str, rec: dict, labels: dict) -> None:
    if url == CHAT_URL:
        if "prompt" in body:
            raise RowProblem("invalid_field", "body.prompt", f"{CHAT_URL} takes body.messages, not body.prompt")
        if "messages" in body:
            rec["messages"] = body["messages"]
        labels["messages"] = labels["prompt"] = "body.messages"
        return
    if "messages" in body:
        raise RowProblem("invalid_field", "body.messages", f"{COMPLETIONS_URL} takes body.prompt, not body.messages")
    if "prompt" in body:
        prompt = body["prompt"]
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise RowProblem(
                    "invalid_field", "body.prompt",
                    "body.prompt must be one string (lists of prompts or token ids are not supported)",
                )
            prompt = prompt[0]
        rec["prompt"] = prompt
    labels["prompt"] = labels["messages"] = "body.prompt"


def _max_tokens(body: dict, rec: dict, labels: dict) -> None:
    new, old = body.get("max_completion_tokens"), body.get("max_tokens")
    if new is not None and old is not None and new != old:
        raise RowProblem(
            "invalid_field", "body.max_completion_tokens",
            f"body.max_completion_tokens ({show(new)}) and body.max_tokens ({show(old)}) disagree",
        )
    if new is not None:
        rec["max_new_tokens"], labels["max_new_tokens"] = new, "body.max_completion_tokens"
    elif old is not None:
        rec["max_new_tokens"], labels["max_new_tokens"] = old, "body.max_tokens"


def _metadata(obj: dict, body: dict, rec: dict, labels: dict) -> None:
    for key in METADATA:
        top, inner = obj.get(key), body.get(key)
        if top is not None and inner is not None and top != inner:
            raise RowProblem("invalid_field", key, f"{key} and body.{key} disagree ({show(top)} vs {show(inner)})")
        if top is not None:
            rec[key] = top
        elif inner is not None:
            rec[key], labels[key] = inner, f"body.{key}"
