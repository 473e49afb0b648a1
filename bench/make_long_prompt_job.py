"""The long-prompt job of issue 16: one prompt of 20,000 characters (about 5,400 tokens of
SmolLM2) among four short AlpacaEval prompts, 8 new tokens each.

    python bench/make_long_prompt_job.py --out /tmp/longprompt.jsonl
    uellm run /tmp/longprompt.jsonl --engine hf --slo 300     # forecast against actual

The long prompt asks for a summary of reference answers from the shared AlpacaEval file, so it
is real text; the same file gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

WORKLOAD = Path(__file__).resolve().parents[2] / "shared" / "workloads" / "alpaca_eval_dev.jsonl"
HEAD = "Summarise the following answers in one sentence.\n\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--source", type=Path, default=WORKLOAD, help="AlpacaEval rows with ref_outputs")
    ap.add_argument("--chars", type=int, default=20_000, help="length of the long prompt")
    ap.add_argument("--short", type=int, default=4, help="short rows after it")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in args.source.read_text().splitlines() if line.strip()]
    answers = [ref["text"] for r in rows for ref in r.get("ref_outputs", {}).values() if ref.get("text")]
    body = "\n\n".join(answers)
    if len(HEAD) + len(body) < args.chars:
        raise SystemExit(f"{args.source}: its answers hold only {len(body)} characters")
    job = [{"id": "long", "prompt": (HEAD + body)[:args.chars], "max_new_tokens": args.max_new_tokens}]
    job += [{"id": f"short-{i}", "prompt": rows[i]["prompt"], "max_new_tokens": args.max_new_tokens}
            for i in range(1, args.short + 1)]
    args.out.write_text("".join(json.dumps(r) + "\n" for r in job))
    print(f"wrote {args.out}: {len(job)} rows, the first of {args.chars} characters")


if __name__ == "__main__":
    main()
