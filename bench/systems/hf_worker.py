"""Run one transformers baseline on a bench task; a process of its own (peak RSS is its own).

    python bench/systems/hf_worker.py TASK.json OUT.json

TASK: {"mode": "naive"|"static"|"cb", "batch_size": int, "model": path, "threads": int,
       "eos_ids": [int], "rows": [{"index", "id", "prompt_ids", "max_new_tokens"}]}
OUT:  {"t0_wall", "load_s", "rows": [{"index", "status", "output_text", "output_tokens",
       "finish_reason", "prompt_tokens", "started_s", "finished_s"}], "batches": [...],
       "notes": [...]}
Times are seconds since this process started (the system's own run clock; loading counts).
"""

from __future__ import annotations

import time

T0_WALL = time.time()
T0 = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from prompts import cut_at_eos  # noqa: E402


def now() -> float:
    return time.perf_counter() - T0


def load(task: dict):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(int(task["threads"]))
    tok = AutoTokenizer.from_pretrained(task["model"])
    model = AutoModelForCausalLM.from_pretrained(task["model"], dtype=torch.float32)
    model.eval()
    return tok, model


def _row_out(tok, row: dict, ids: list[int], eos: list[int], started: float, finished: float):
    real, finish = cut_at_eos(ids, eos, int(row["max_new_tokens"]))
    return {
        "index": row["index"], "id": row["id"], "status": "ok",
        "output_text": tok.decode(real, skip_special_tokens=True),
        "output_tokens": len(real), "finish_reason": finish,
        "prompt_tokens": len(row["prompt_ids"]), "started_s": started, "finished_s": finished,
    }


def run_static(task: dict, tok, model, batch_size: int) -> tuple[list[dict], list[dict]]:
    """Fixed batches in input order, left padded; a row's result is ready at its batch's end.
    hf-naive is this with batch_size 1 (no padding at all)."""
    import torch

    eos = task["eos_ids"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    rows, out, batches = task["rows"], [], []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = max(len(r["prompt_ids"]) for r in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            p = r["prompt_ids"]
            input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        started = now()
        with torch.inference_mode():
            gen = model.generate(
                input_ids=input_ids, attention_mask=mask,
                max_new_tokens=max(int(r["max_new_tokens"]) for r in batch),
                do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=pad, eos_token_id=eos,
            )
        finished = now()
        new = gen[:, width:].tolist()
        results = [_row_out(tok, r, ids, eos, started, finished) for r, ids in zip(batch, new, strict=True)]
        out.extend(results)
        steps = len(new[0]) if new else 0
        batches.append({"rows": len(batch), "steps": steps, "prompt_width": width,
                        "real_tokens": sum(r["output_tokens"] for r in results),
                        "started_s": started, "finished_s": finished})
    return out, batches


def run_cb(task: dict, tok, model, slots: int) -> tuple[list[dict], list[dict], list[str]]:
    """transformers' continuous batching manager: all rows queued at t=0 in input order (FIFO);
    a row's result is ready when the manager hands it back."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    eos = task["eos_ids"]
    rows = task["rows"]
    page = 32
    longest = max(len(r["prompt_ids"]) + int(r["max_new_tokens"]) for r in rows)
    blocks_per_row = -(-longest // page)
    cb_cfg = ContinuousBatchingConfig(
        page_size=page,
        num_blocks=blocks_per_row * min(slots, len(rows)) + 2,
        max_batch_tokens=int(task.get("cb_max_batch_tokens", 512)),
        max_requests_per_batch=slots,
    )
    gen_cfg = GenerationConfig(
        max_new_tokens=max(int(r["max_new_tokens"]) for r in rows), do_sample=False,
        eos_token_id=eos, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
    )
    notes = [f"page_size={page}, num_blocks={cb_cfg.num_blocks}, "
             f"max_batch_tokens={cb_cfg.max_batch_tokens}, max_requests_per_batch={slots}"]
    by_id = {str(r["index"]): r for r in rows}
    done: dict[str, dict] = {}
    with model.continuous_batching_context_manager(
        generation_config=gen_cfg, continuous_batching_config=cb_cfg, warmup=False,
        block=True, timeout=30,
    ) as manager:
        started = now()
        for r in rows:
            manager.add_request(input_ids=r["prompt_ids"], request_id=str(r["index"]),
                                max_new_tokens=int(r["max_new_tokens"]), eos_token_id=eos)
        while len(done) < len(rows):
            res = manager.get_result(timeout=1.0)
            if res is None:
                if not manager.is_running():
                    notes.append("continuous batching thread stopped early")
                    break
                continue
            if not res.is_finished() or res.request_id not in by_id:
                continue
            row = by_id[res.request_id]
            if res.error is not None:
                done[res.request_id] = {"index": row["index"], "id": row["id"], "status": "error",
                                        "error": str(res.error)[:300], "finished_s": now()}
                continue
            done[res.request_id] = _row_out(tok, row, list(res.generated_tokens), eos,
                                            started, now())
    out = []
    for r in rows:
        out.append(done.get(str(r["index"])) or {
            "index": r["index"], "id": r["id"], "status": "error", "error": "no result"})
    return out, [], notes


def main(task_path: str, out_path: str) -> int:
    task = json.loads(Path(task_path).read_text())
    tok, model = load(task)
    load_s = now()
    mode = task["mode"]
    notes: list[str] = []
    if mode == "naive":
        rows, batches = run_static(task, tok, model, 1)
    elif mode == "static":
        rows, batches = run_static(task, tok, model, int(task["batch_size"]))
    elif mode == "cb":
        rows, batches, notes = run_cb(task, tok, model, int(task["batch_size"]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    # start-up = until the first row starts generating (the same definition for every system)
    starts = [r["started_s"] for r in rows if r.get("started_s") is not None]
    load_s = min(starts) if starts else load_s
    doc = {"t0_wall": T0_WALL, "load_s": load_s, "end_s": now(), "rows": rows,
           "batches": batches, "notes": notes}
    Path(out_path).write_text(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
