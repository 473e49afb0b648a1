"""Run vLLM's offline engine on a bench task, with the project's python (vLLM beside uellm).

    .venv/bin/python bench/vllm_worker.py TASK.json OUT.json

TASK: {"model": path, "threads": int, "priority": bool, "eos_ids": [int],
       "max_model_len": int, "kv_cache_gib": float, "gpu_memory_utilization": float,
       "rows": [{"index", "id", "prompt_ids", "max_new_tokens", "priority"}]}
OUT:  {"t0_wall", "load_s", "end_s", "rows": [{"index", "status", "output_text",
       "output_tokens", "finish_reason", "prompt_tokens", "finished_s"}], "notes", "versions"}

All rows are queued at once (the whole job arrives at t=0, as for every system) and the
engine is stepped by hand, like LLM.generate does inside, so each row's finish time is the
moment its last token is out. Standalone: imports nothing from the bench package.
"""

from __future__ import annotations

import time

T0_WALL = time.time()
T0 = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def now() -> float:
    return time.perf_counter() - T0


def cut_at_eos(ids: list[int], eos: set[int], cap: int, finish: str | None) -> tuple[int, str]:
    """Real output tokens up to and including EOS. vLLM drops the EOS id from token_ids on
    some paths; a "stop" finish without it still spent a step on EOS, so it counts."""
    ids = list(ids)[:cap]
    for i, t in enumerate(ids):
        if t in eos:
            return i + 1, "stop"
    if finish == "stop" and len(ids) < cap:
        return len(ids) + 1, "stop"
    return len(ids), "length" if finish in (None, "length") else finish


def main(task_path: str, out_path: str) -> int:
    task = json.loads(Path(task_path).read_text())
    # The engine core runs in this process, so ru_maxrss covers the model and the KV cache.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ["OMP_NUM_THREADS"] = str(task["threads"])
    import vllm
    from vllm import LLM, SamplingParams

    eos = {int(e) for e in task["eos_ids"]}
    llm = LLM(
        model=task["model"], dtype="float32", enforce_eager=True, seed=0,
        max_model_len=int(task["max_model_len"]),
        gpu_memory_utilization=float(task.get("gpu_memory_utilization", 0.3)),
        kv_cache_memory_bytes=int(float(task["kv_cache_gib"]) * 2**30),
        scheduling_policy="priority" if task["priority"] else "fcfs",
        disable_log_stats=True,
    )
    load_s = now()
    engine = llm.llm_engine
    rows = task["rows"]
    by_req: dict[str, dict] = {}
    for r in rows:
        params = SamplingParams(
            temperature=0.0, max_tokens=int(r["max_new_tokens"]), ignore_eos=False,
            stop_token_ids=sorted(eos), skip_special_tokens=True,
        )
        req_id = engine.add_request(
            str(r["index"]), {"prompt_token_ids": list(r["prompt_ids"])}, params,
            priority=int(r["priority"]) if task["priority"] else 0,
        )
        # the engine appends a random suffix to the id; outputs may carry either form
        by_req[str(req_id)] = by_req[str(r["index"])] = r
    done: dict[int, dict] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if not out.finished:
                continue
            r = by_req.get(str(out.request_id))
            if r is None:
                continue
            comp = out.outputs[0]
            n, finish = cut_at_eos(comp.token_ids, eos, int(r["max_new_tokens"]),
                                   comp.finish_reason)
            done[r["index"]] = {
                "index": r["index"], "id": r["id"], "status": "ok",
                "output_text": comp.text, "output_tokens": n, "finish_reason": finish,
                "prompt_tokens": len(r["prompt_ids"]), "finished_s": now(),
            }
    result_rows = [done.get(r["index"]) or {"index": r["index"], "id": r["id"],
                                            "status": "error", "error": "no result"}
                   for r in rows]
    doc = {
        "t0_wall": T0_WALL, "load_s": load_s, "end_s": now(), "rows": result_rows,
        "notes": [f"vllm {vllm.__version__}, dtype float32, enforce_eager, "
                  f"kv_cache {task['kv_cache_gib']} GiB, max_model_len {task['max_model_len']}"],
    }
    Path(out_path).write_text(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
