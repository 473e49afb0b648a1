"""`uellm profile` for people: devices, links, the model's memory and FLOPs, calibrations and a
job's predicted lengths, as tables on the console the command gives."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from uellm_cli.report.formats import fmt_bytes, fmt_si


def render_profile(doc: dict, console: Console) -> None:
    """Print the profile document (profile/document.py) as tables: devices, links, model, memory,
    calibrations, and the job sample when there is one."""
    cl, m = doc["cluster"], doc["model"]
    for note in cl.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    t = Table(title=f"devices ({cl['source']})", title_justify="left")
    for col in ("id", "name", "memory", "compute", "memory bandwidth", "numbers from"):
        t.add_column(col)
    for d in cl["devices"]:
        t.add_row(d["id"], escape(d["name"]), fmt_bytes(d["memory_bytes"]), fmt_si(d["flops"], "FLOP/s"),
                  fmt_si(d["mem_bandwidth"], "B/s"), d.get("numbers_from", ""))
    console.print(t)
    if cl["links"]:
        lt = Table(title="links (per direction)", title_justify="left")
        for col in ("between", "kind", "bandwidth", "latency", "detail"):
            lt.add_column(col)
        groups: dict[tuple, list[str]] = {}
        for link in cl["links"]:
            key = (link["kind"], link["bandwidth"], link["latency"], link.get("detail", ""))
            groups.setdefault(key, []).append(f"{link['a']}-{link['b']}")
        for (kind, bandwidth, latency, detail), pairs in groups.items():
            shown = ", ".join(pairs[:3]) + (f" +{len(pairs) - 3} more" if len(pairs) > 3 else "")
            lt.add_row(shown, kind, fmt_si(bandwidth, "B/s"), f"{latency * 1e6:.0f} us", escape(detail))
        console.print(lt)
    console.print(
        f"[bold]model[/bold] {escape(m['name'])} ({m['architecture']}, {m['dtype']}): {m['num_layers']} layers, "
        f"{m['extra'].get('num_params', 0) / 1e9:.3g} B params, weights {fmt_bytes(m['weight_bytes'])} "
        f"(embeddings {fmt_bytes(m['embed_bytes'])}, layer {fmt_bytes(m['layer_bytes'])}, head {fmt_bytes(m['head_bytes'])})",
        highlight=False)
    console.print(
        f"  KV cache {m['kv_bytes_per_token']:,} B/token ({m['num_kv_heads']} KV heads x {m['head_dim']}), "
        f"{m['flops_per_token'] / 1e9:.3g} GFLOP/token + {m['attn_flops_per_token_per_ctx']:,.0f} FLOP per context token, "
        f"max context {m['max_context']:,}", highlight=False)
    mt = Table(title="model memory per device (whole model on one device)", title_justify="left")
    for col in ("device", "memory", "weights", "fits", "KV tokens in the rest", "layers that fit"):
        mt.add_column(col)
    for r in doc["memory"]:
        mt.add_row(r["device"], fmt_bytes(r["memory_bytes"]), fmt_bytes(r["weight_bytes"]), "yes" if r["fits"] else "no",
                   f"{r['kv_tokens']:,}", f"{r['layers_fit']}/{m['num_layers']}")
    console.print(mt)
    _render_calibrations(doc["calibrations"], console)
    if "job" in doc:
        _render_job(doc["job"], console)


def _render_calibrations(cals: dict, console: Console) -> None:
    if not cals:
        console.print("[dim]no calibration for this model here: the cost model uses the roofline "
                      "(run `uellm profile --calibrate`)[/dim]", highlight=False)
        return
    engine = next(iter(cals.values())).get("engine", "hf")
    ct = Table(title=f"calibration ({engine} engine)", title_justify="left")
    for col in ("device", "prefill 1x512", "decode step b=1 ctx=512", "decode step b=16 ctx=512", "fit MAPE", "measured"):
        ct.add_column(col)
    for name, c in cals.items():
        p0, p1, p2 = c["prefill"]
        d0, d1, d2 = c["decode"]
        err = c.get("fit_error", {})
        ct.add_row(escape(name), f"{(p0 + p1 * 512 + p2 * 512 * 512) * 1e3:.1f} ms",
                   f"{(d0 + d1 + d2 * 512) * 1e3:.1f} ms", f"{(d0 + 16 * d1 + 16 * d2 * 512) * 1e3:.1f} ms",
                   _fit_error(err),
                   c.get("measured_at", ""))
    console.print(ct)


def _render_job(job: dict, console: Console) -> None:
    jt = Table(title=f"job {escape(job['file'])}: {job['rows']} rows, predictor {job['predictor']}", title_justify="left")
    for col in ("id", "prompt tokens (est.)", "max_new_tokens", "predicted", "upper"):
        jt.add_column(col)
    for s in job["sample"]:
        jt.add_row(escape(str(s["id"])), str(s["prompt_tokens_est"]), str(s["max_new_tokens"]),
                   str(s["predicted_tokens"]), str(s["predicted_upper"]))
    console.print(jt)


def _fit_error(err: dict) -> str:
    """How well the calibration fits what it measured: per engine step (vLLM), per batch (runs
    of the hf engine), or its prefill and decode grids."""
    for key, label in (("step_mape", "per step"), ("batch_mape", "per batch")):
        if key in err:
            return f"{err[key]:.1%} {label}"
    if "prefill_mape" in err:
        return f"{err['prefill_mape']:.1%} prefill / {err.get('decode_mape', float('nan')):.1%} decode"
    return "n/a"
