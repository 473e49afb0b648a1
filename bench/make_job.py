"""Synthetic bench jobs: N rows asking for answers of given lengths, with deadlines in the
five bands of the UELLM paper, scaled so the job is feasible, tight or impossible.

    python bench/make_job.py --rows 1000 --out /tmp/job.jsonl --load tight --seed 0
    python bench/make_job.py --rows 200 --out job.jsonl --load 0.7 --tok-s 40 --load-s 8

Rows are uellm's native JSONL: {"id", "prompt", "slo_s", "max_new_tokens"} plus passthrough
fields "band" (0 tightest .. 4 loosest), "target_words" and "expected_tokens".
Prompts are "Write N words about X." style instructions, optionally after context sentences
that set the prompt length. The same arguments and --seed give the same bytes.

How the load factor maps to deadlines
-------------------------------------
    T_est = load_s + sum(prompt tokens) / prefill_tok_s + sum(expected output tokens) / tok_s
is the estimated time for one system to finish the whole job (every row arrives at t=0).
`tok_s` is a throughput estimate for the system under test (take it from a bench result:
output tokens/s of e.g. hf-static-16 on this machine); expected output tokens are
min(max_new_tokens, 1.3 * target_words + 8).
The paper's five SLO bands (90-100, 100-120, 150-180, 180-220, 220-250 s) are divided by
their largest value (250 s) to give fractions of T_est, and every deadline is
    slo_s = uniform(band_lo, band_hi) * T_est / load.
With load = 1 ("tight") the loosest band ends exactly at T_est and the tightest sits at
0.36-0.40 T_est: an earliest-deadline-first order on a system as fast as the estimate just
makes it (the k-th fifth of the rows in deadline order finishes at about k/5 T_est, against
deadlines of 0.36, 0.40, 0.60, 0.72, 0.88 T_est at each band's low end). load = 0.5 ("feasible")
doubles every deadline; load = 2 ("impossible") halves them, so about half the rows must miss.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

PAPER_BANDS_S = ((90, 100), (100, 120), (150, 180), (180, 220), (220, 250))
BAND_FRACTIONS = tuple((lo / 250.0, hi / 250.0) for lo, hi in PAPER_BANDS_S)
LOAD_PRESETS = {"feasible": 0.5, "tight": 1.0, "impossible": 2.0}
TOKENS_PER_WORD = 1.3
TEMPLATE_TOKENS = 30  # chat template around the user text (SmolLM2's is ~30 tokens)

TOPICS = (
    "the water cycle", "volcanoes", "the history of the printing press", "how vaccines work",
    "the French Revolution", "photosynthesis", "black holes", "the Roman road network",
    "machine learning", "coral reefs", "the invention of the telephone", "honey bees",
    "the Silk Road", "plate tectonics", "renewable energy", "the human heart",
    "medieval castles", "the Moon landing", "rainforests", "the stock market",
    "how bread is made", "the Great Wall of China", "electric cars", "migratory birds",
    "the Olympic Games", "compilers", "the Amazon river", "how a bicycle works",
    "ancient Egypt", "climate change", "the periodic table", "jazz music",
    "public libraries", "the immune system", "deserts", "the internet",
    "chess strategy", "sourdough starters", "lighthouses", "the solar system",
)

INSTRUCTIONS = (
    "Write {n} words about {topic}.",
    "In about {n} words, explain {topic} to a curious student.",
    "Describe {topic} in roughly {n} words.",
    "Give a {n}-word summary of {topic}.",
    "Write a short essay of about {n} words on {topic}.",
)

CONTEXT_SENTENCES = (
    "The report was written for a general audience with no special training.",
    "Our team meets every Monday to plan the work of the coming week.",
    "Please keep the tone friendly and avoid jargon where a plain word will do.",
    "The museum opens at nine and closes at five on weekdays.",
    "Readers of the newsletter range from school pupils to retired engineers.",
    "Last year the library added a new wing for science and history books.",
    "A good answer starts with the main idea and then gives one or two examples.",
    "The village sits at the foot of a hill, beside a slow green river.",
    "Several readers asked for shorter paragraphs and clearer headings.",
    "The editor prefers British spelling and short sentences.",
    "This text will be read aloud on the radio, so it should sound natural.",
    "Facts should be accurate; if something is uncertain, say so briefly.",
    "The audience is mostly adults who enjoy learning something new each week.",
    "Earlier articles in the series covered rivers, mountains and forests.",
    "Numbers should be written as digits when they are larger than ten.",
    "The weather this spring has been unusually warm and dry.",
)


@dataclass(slots=True, frozen=True)
class Dist:
    """A length distribution: uniform(lo, hi), lognormal(median, sigma) clipped to [lo, hi],
    or fixed(value)."""

    kind: str
    a: float
    b: float = 0.0
    lo: float = 1.0
    hi: float = 1e9

    def spec(self) -> str:
        return f"fixed:{self.a:g}" if self.kind == "fixed" else f"{self.kind}:{self.a:g}:{self.b:g}"

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        value = rng.lognormvariate(math.log(self.a), self.b)
        return int(round(min(max(value, self.lo), self.hi)))


def parse_dist(text: str, lo: float = 1.0, hi: float = 1e9) -> Dist:
    """'uniform:10:200', 'lognormal:60:0.8' (median, sigma) or 'fixed:50'."""
    parts = text.split(":")
    try:
        if parts[0] == "fixed" and len(parts) == 2:
            return Dist("fixed", float(parts[1]))
        if parts[0] in ("uniform", "lognormal") and len(parts) == 3:
            a, b = float(parts[1]), float(parts[2])
            if parts[0] == "uniform" and not 0 <= a <= b:
                raise ValueError
            return Dist(parts[0], a, b, lo, hi)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"bad distribution '{text}': use uniform:LO:HI, lognormal:MEDIAN:SIGMA or fixed:N")


def parse_load(text: str) -> float:
    if text in LOAD_PRESETS:
        return LOAD_PRESETS[text]
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"bad load '{text}': a number > 0 or one of {', '.join(LOAD_PRESETS)}")
    return value


def expected_tokens(target_words: int, max_new_tokens: int) -> int:
    return min(max_new_tokens, int(TOKENS_PER_WORD * target_words) + 8)


def make_rows(n: int, *, seed: int = 0, prompt_words: Dist | None = None,
              output_words: Dist | None = None, max_new_tokens: int = 128,
              load: float = 1.0, tok_s: float = 40.0, prefill_tok_s: float | None = None,
              load_s: float = 8.0) -> tuple[list[dict], dict]:
    """The rows and a description of how their deadlines were set (for the .meta.json)."""
    rng = random.Random(seed)
    prompt_words = prompt_words or Dist("uniform", 0, 60)
    output_words = output_words or Dist("lognormal", 60, 0.7, 5, 400)
    prefill_tok_s = prefill_tok_s or 10 * tok_s
    rows, prompt_tokens, out_tokens = [], 0, 0
    for i in range(n):
        target = max(1, output_words.draw(rng))
        topic = rng.choice(TOPICS)
        ask = rng.choice(INSTRUCTIONS).format(n=target, topic=topic)
        context: list[str] = []
        want = prompt_words.draw(rng)
        while sum(len(s.split()) for s in context) < want:
            context.append(rng.choice(CONTEXT_SENTENCES))
        prompt = " ".join([*context, ask])
        exp = expected_tokens(target, max_new_tokens)
        prompt_tokens += int(TOKENS_PER_WORD * len(prompt.split())) + TEMPLATE_TOKENS
        out_tokens += exp
        rows.append({"id": f"syn-{i:06d}", "prompt": prompt, "max_new_tokens": max_new_tokens,
                     "band": i % 5, "target_words": target, "expected_tokens": exp})
    # equal-sized bands, assigned by a seeded shuffle (as the paper's 20 queries per band)
    bands = [i % 5 for i in range(n)]
    rng.shuffle(bands)
    t_est = load_s + prompt_tokens / prefill_tok_s + out_tokens / tok_s
    for row, band in zip(rows, bands, strict=True):
        lo, hi = BAND_FRACTIONS[band]
        row["band"] = band
        row["slo_s"] = round(rng.uniform(lo, hi) * t_est / load, 1)
    meta = {
        "rows": n, "seed": seed, "max_new_tokens": max_new_tokens, "load": load,
        "tok_s": tok_s, "prefill_tok_s": prefill_tok_s, "load_s": load_s,
        "expected_output_tokens": out_tokens, "estimated_prompt_tokens": prompt_tokens,
        "t_est_s": round(t_est, 2), "band_fractions": BAND_FRACTIONS,
        "prompt_words": prompt_words.spec(), "output_words": output_words.spec(),
    }
    return rows, meta


def write_job(rows: list[dict], meta: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    order = ("id", "prompt", "slo_s", "max_new_tokens", "band", "target_words", "expected_tokens")
    with open(out, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({k: r[k] for k in order}) + "\n")
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-words", type=parse_dist, default=parse_dist("uniform:0:60"),
                    help="context words before the instruction (default uniform:0:60)")
    ap.add_argument("--output-words", default="lognormal:60:0.7",
                    help="words each row asks for (default lognormal:60:0.7, clipped to 5..400)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--load", type=parse_load, default=1.0,
                    help="feasible (0.5), tight (1.0), impossible (2.0), or a number")
    ap.add_argument("--tok-s", type=float, default=40.0,
                    help="output tokens/s of the system the deadlines are set for")
    ap.add_argument("--prefill-tok-s", type=float, default=None,
                    help="prompt tokens/s (default 10 x --tok-s)")
    ap.add_argument("--load-s", type=float, default=8.0, help="start-up time (model load) in s")
    args = ap.parse_args(argv)
    if args.rows <= 0 or args.max_new_tokens <= 0 or args.tok_s <= 0:
        ap.error("--rows, --max-new-tokens and --tok-s must be > 0")
    output_words = parse_dist(args.output_words, 5, 400)
    rows, meta = make_rows(args.rows, seed=args.seed, prompt_words=args.prompt_words,
                           output_words=output_words, max_new_tokens=args.max_new_tokens,
                           load=args.load, tok_s=args.tok_s, prefill_tok_s=args.prefill_tok_s,
                           load_s=args.load_s)
    write_job(rows, meta, args.out)
    print(f"{args.out}: {len(rows)} rows, T_est {meta['t_est_s']} s, load {args.load}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
