"""Reading length records (prompt + actual output tokens) from files a user has.

A run's results file (`results.parquet`/`.jsonl`) holds id, status, output_tokens,
prompt_tokens, finish_reason and passthrough columns but not the prompt text, so it is joined
on `id` with the job file that produced it. Files that already carry `prompt` (or `messages`)
need no job. pandas/pyarrow are imported only for Parquet and CSV.
"""

from __future__ import annotations

import json
from pathlib import Path

from uellm_cli.errors import InputError
from uellm_cli.profile.lengths import record_text


def _plain(v):
    """numpy scalars/arrays (from Parquet) to plain Python values."""
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def read_table(path: Path) -> list[dict]:
    """Rows of a JSONL, Parquet or CSV file as dicts."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq", ".csv"):
        import pandas as pd

        try:
            df = pd.read_parquet(path) if suffix != ".csv" else pd.read_csv(path)
        except Exception as exc:  # pyarrow/pandas raise many types for a bad file
            raise InputError(f"{path}: cannot read: {exc}") from None
        return [{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")]
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise InputError(f"{path}:{n}: not a JSON object") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{n}: not a JSON object")
            rows.append(obj)
    return rows


def read_length_records(path: Path, job: Path | None = None, *, split: str | None = None
                        ) -> list[dict]:
    """Records for train_history/evaluate from a results (or length data) file.

    job: the job file of the run, joined on `id` to supply the prompt text (and max_new_tokens
    when the results lack it). split: keep only rows whose `split` column equals it.
    """
    rows = read_table(path)
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    if job is not None:
        by_id = {str(r.get("id")): r for r in read_table(job)}
        joined = []
        for r in rows:
            j = by_id.get(str(r.get("id")))
            if j is None:
                continue
            r = dict(r)
            if record_text(r) is None:
                text = record_text(j)
                if text is not None:
                    r["prompt"] = text
            if r.get("max_new_tokens") is None and j.get("max_new_tokens") is not None:
                r["max_new_tokens"] = j["max_new_tokens"]
            joined.append(r)
        rows = joined
    usable = [r for r in rows if record_text(r) is not None and r.get("output_tokens") is not None]
    if not usable:
        hint = None if job else "results files hold no prompt text: pass the run's job with --job"
        raise InputError(f"{path}: no rows with both a prompt and output_tokens", hint=hint)
    return usable
