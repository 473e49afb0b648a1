"""Read a bench job (JSONL in uellm's native format) and fix what every system will see."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DEFAULT_MAX_NEW_TOKENS = 256  # uellm run's default when a row has none


class JobError(ValueError):
    """A job file the bench cannot use; the message names the file and line."""


def read_job(path: Path, *, limit: int | None = None, max_new_tokens: int | None = None,
             slo_scale: float = 1.0) -> list[dict]:
    """Rows as plain dicts: index, id, prompt | messages, deadline_s, max_new_tokens, priority.

    max_new_tokens (if given) replaces every row's own value; slo_scale multiplies every
    row's slo_s. ISO `deadline` values are refused: the bench needs deadlines relative to
    each system's own start.
    """
    rows: list[dict] = []
    if not Path(path).is_file():
        raise JobError(f"{path}: no such file")
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JobError(f"{path}:{line_no}: not JSON ({exc.msg})") from None
            if "deadline" in obj and "slo_s" not in obj:
                raise JobError(f"{path}:{line_no}: absolute `deadline` is not supported by the "
                               "bench; use slo_s (seconds after the start)")
            if ("prompt" in obj) == ("messages" in obj):
                raise JobError(f"{path}:{line_no}: needs exactly one of prompt or messages")
            slo = obj.get("slo_s")
            row = {
                "index": len(rows),
                "id": str(obj.get("id", len(rows))),
                "deadline_s": None if slo is None else round(float(slo) * slo_scale, 3),
                "max_new_tokens": int(max_new_tokens or obj.get("max_new_tokens")
                                      or DEFAULT_MAX_NEW_TOKENS),
                "priority": int(obj.get("priority", 0)),
            }
            if "prompt" in obj:
                row["prompt"] = str(obj["prompt"])
            else:
                row["messages"] = obj["messages"]
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise JobError(f"{path}: no rows")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise JobError(f"{path}: duplicate ids")
    return rows


def write_job(rows: list[dict], path: Path) -> Path:
    """The exact job uellm is given (after --limit, --max-new-tokens and --slo-scale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            obj = {"id": r["id"]}
            if "prompt" in r:
                obj["prompt"] = r["prompt"]
            else:
                obj["messages"] = r["messages"]
            if r["deadline_s"] is not None:
                obj["slo_s"] = r["deadline_s"]
            obj["max_new_tokens"] = r["max_new_tokens"]
            if r["priority"]:
                obj["priority"] = r["priority"]
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def deadline_priorities(rows: list[dict]) -> dict[int, int]:
    """vLLM priority per row index: rank of its deadline (earlier = lower number), ties by the
    row's own priority then input order; rows without a deadline come last."""
    def key(r):
        d = r["deadline_s"]
        return (d is None, d if d is not None else 0.0, r["priority"], r["index"])

    return {r["index"]: rank for rank, r in enumerate(sorted(rows, key=key))}
