"""Figures per system (one definition for all), agreement with the first system, ratios, and
the Markdown table. Pure: no clock, no I/O."""

from __future__ import annotations

import hashlib
import heapq
import math

from systems.outcome import SystemRun

AGREE_WARN = 0.8  # below this share of exactly equal outputs, the table flags the system

# (key, header, format, higher_is_better)
COLUMNS = (
    ("load_s", "load s", "{:.1f}", False),
    ("makespan_s", "makespan s", "{:.1f}", False),
    ("tok_s", "tok/s", "{:.1f}", True),
    ("slo_attainment", "SLO att.", "{:.2f}", True),
    ("slo_forecast", "SLO fc", "{:.2f}", None),
    ("bound", "bound", "{:.2f}", True),
    ("mean_latency_s", "mean lat s", "{:.1f}", False),
    ("p99_latency_s", "p99 lat s", "{:.1f}", False),
    ("padding_waste", "pad waste", "{:.2f}", False),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}", False),
    ("forecast_error", "fc err", "{:+.1%}", None),
    ("replay_error", "replay err", "{:+.1%}", None),
    ("replay_row_error", "replay row err", "{:.1%}", None),
    ("own_replay_error", "own-step replay err", "{:+.1%}", None),
    ("own_replay_row_error", "own-step row err", "{:.1%}", None),
)
NO_RATIO = {"bound", "slo_forecast", "forecast_error", "replay_error", "replay_row_error",
            "own_replay_error", "own_replay_row_error"}


def text_digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def figures(run: SystemRun, deadlines: dict[int, float | None]) -> dict:
    """The table's figures for one system.

    load: start-up, until the first row starts generating (run.load_s, set by the adapter).
    makespan: last row's finish on the system's own clock (start-up included).
    tok/s: real output tokens (to and including EOS) / (makespan - load), the generation rate.
    SLO attainment: rows finished (ok) by their deadline / rows with a deadline; a failed or
    missing row misses. Latency of a row = its finish time (the whole job arrives at t=0).
    """
    ok = [r for r in run.rows if r.get("status") == "ok" and r.get("finished_s") is not None]
    finishes = [float(r["finished_s"]) for r in ok]
    makespan = max(finishes) if finishes else None
    tokens = sum(int(r.get("output_tokens") or 0) for r in ok)
    gen_s = None if makespan is None else makespan - (run.load_s or 0.0)
    with_deadline = [i for i, d in deadlines.items() if d is not None]
    by_index = {r["index"]: r for r in ok}
    met = sum(1 for i in with_deadline
              if i in by_index and float(by_index[i]["finished_s"]) <= deadlines[i])
    tok_s = tokens / gen_s if gen_s and gen_s > 0 else None
    fc = run.forecast or {}
    return {
        "rows": len(run.rows), "rows_ok": len(ok), "output_tokens": tokens,
        "load_s": run.load_s, "makespan_s": makespan, "gen_s": gen_s,
        "tok_s": tok_s,
        "slo_attainment": met / len(with_deadline) if with_deadline else None,
        "slo_forecast": fc.get("slo_attainment"),  # the plan's, before the run
        "bound": fluid_bound(by_index, deadlines, tok_s, run.load_s or 0.0),
        "mean_latency_s": sum(finishes) / len(finishes) if finishes else None,
        "p99_latency_s": percentile(finishes, 99),
        "padding_waste": run.padding_waste, "peak_rss_mb": run.peak_rss_mb,
        "forecast_error": fc.get("makespan_error"), "replay_error": fc.get("replay_makespan_error"),
        "replay_row_error": fc.get("replay_row_error"),
        "own_replay_error": fc.get("own_replay_makespan_error"),
        "own_replay_row_error": fc.get("own_replay_row_error"),
    }


def fluid_bound(ok: dict[int, dict], deadlines: dict[int, float | None], tok_s: float | None,
                start_s: float) -> float | None:
    """The share of rows with a deadline a fluid server could have met: one that generates
    at the system's own measured tok/s from its own measured start-up, one row at a time,
    choosing the rows by Moore-Hodgson (deadline order; whenever one would be late, drop the
    longest kept so far), which maximises the rows on time for a single server. Each row
    takes its true output tokens / tok/s; a row that failed counts as missed."""
    with_deadline = [i for i, d in deadlines.items() if d is not None]
    if not with_deadline or not tok_s:
        return None
    jobs = sorted((deadlines[i], int(ok[i].get("output_tokens") or 0) / tok_s)
                  for i in with_deadline if i in ok)
    kept: list[float] = []  # max-heap of kept durations (negated)
    t = start_s
    for deadline, seconds in jobs:
        heapq.heappush(kept, -seconds)
        t += seconds
        if t > deadline:
            t += heapq.heappop(kept)  # the longest kept row goes
    return len(kept) / len(with_deadline)


def agreement(run: SystemRun, base: SystemRun) -> dict | None:
    """Per row against the first system: share with the exact same text, and with the same
    output token count (rows ok in both)."""
    if run is base or not base.rows or not run.rows:
        return None
    mine = {r["index"]: r for r in run.rows if r.get("status") == "ok"}
    pairs = [(mine[b["index"]], b) for b in base.rows
             if b.get("status") == "ok" and b["index"] in mine]
    if not pairs:
        return {"rows": 0, "text": None, "tokens": None, "prompt_tokens": None}
    same_text = sum(a.get("output_text") == b.get("output_text") for a, b in pairs)
    same_tokens = sum(a.get("output_tokens") == b.get("output_tokens") for a, b in pairs)
    prompt_pairs = [(a, b) for a, b in pairs
                    if a.get("prompt_tokens") is not None and b.get("prompt_tokens") is not None]
    same_prompt = sum(a["prompt_tokens"] == b["prompt_tokens"] for a, b in prompt_pairs)
    return {
        "rows": len(pairs), "text": same_text / len(pairs), "tokens": same_tokens / len(pairs),
        "prompt_tokens": same_prompt / len(prompt_pairs) if prompt_pairs else None,
    }


def ratios(fig: dict, base: dict) -> dict:
    """Each figure / the first system's figure (None where either is missing or zero)."""
    out = {}
    for key, *_ in COLUMNS:
        if key in NO_RATIO:
            continue
        a, b = fig.get(key), base.get(key)
        out[key] = a / b if a is not None and b not in (None, 0) else None
    return out


def compact_rows(run: SystemRun, deadlines: dict[int, float | None]) -> list[dict]:
    """Per-row record for the results JSON: no texts, a digest instead (keeps files small)."""
    out = []
    for r in run.rows:
        d = deadlines.get(r["index"])
        fin = r.get("finished_s")
        out.append({
            "id": r["id"], "status": r.get("status"), "output_tokens": r.get("output_tokens"),
            "prompt_tokens": r.get("prompt_tokens"), "finish_reason": r.get("finish_reason"),
            "finished_s": None if fin is None else round(float(fin), 3), "deadline_s": d,
            "slo_met": None if d is None else bool(r.get("status") == "ok" and fin is not None
                                                   and float(fin) <= d),
            "text_sha1": text_digest(r.get("output_text")),
        })
    return out


def _cell(value, fmt: str, ratio) -> str:
    if value is None:
        return "–"
    text = fmt.format(value)
    return f"{text} ({ratio:.2f}x)" if ratio is not None else text


def markdown(systems: list[dict], *, header_lines: list[str], roofline_line: str | None) -> str:
    """One table: every figure with its ratio to the first system; skipped/failed say why."""
    heads = ["system"] + [h for _, h, _, _ in COLUMNS] + ["agree (text/tokens)"]
    lines = list(header_lines) + ["", "| " + " | ".join(heads) + " |",
                                  "|" + "---|" * len(heads)]
    notes = []
    for s in systems:
        if s["status"] != "ok":
            lines.append(f"| {s['name']} | {s['status']}: {s['reason']} |"
                         + " |" * (len(heads) - 2))
            continue
        f, r = s["figures"], s.get("ratios") or {}
        cells = [_cell(f.get(k), fmt, r.get(k)) for k, _, fmt, _ in COLUMNS]
        ag = s.get("agreement")
        if ag is None:
            agree = "baseline"
        elif ag["text"] is None:
            agree = "–"
        else:
            agree = f"{ag['text']:.2f} / {ag['tokens']:.2f}"
            if ag["text"] < AGREE_WARN:
                agree += " ⚠"
                notes.append(f"{s['name']}: only {ag['text']:.0%} of rows have the same text as "
                             f"{systems[0]['name']}")
        lines.append("| " + " | ".join([s["name"], *cells, agree]) + " |")
    if roofline_line:
        lines += ["", roofline_line]
    lines += ["", *notes] if notes else []
    return "\n".join(lines) + "\n"
