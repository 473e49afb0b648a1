"""Prepare: a job file and a model to rows ready to plan, the same for `uellm run` and
`uellm plan` (so their forecasts start from the same prompt tokens and budgets).

`uellm run` tokenises with the model's own tokenizer (chat template where it applies).
`uellm plan` may have no weights and no tokenizer (`--model llama-2-70b`): it tokenises when
the model's files are here, and otherwise estimates a prompt at one token per
CHARS_PER_TOKEN characters. Either way a prompt the context cannot hold is rejected, and a
budget that would overrun the context is capped, with a warning on the row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from uellm_cli.config import RunConfig
from uellm_cli.engine.base import Encoder
from uellm_cli.engine.models import ResolvedModel
from uellm_cli.engine.rows import PreparedRow
from uellm_cli.jobs.schema import Job, Row, RowError

# Tokens kept free at the end of the context so generation always has room for EOS.
MIN_NEW_TOKENS = 1
CHARS_PER_TOKEN = 4  # the prompt-token estimate without a tokenizer


@dataclass(slots=True)
class ModelInputs:
    """What a run knows of its model before weights load. `resolved` and `tokenizer` are None
    for `uellm plan` of a model whose files are not here (an alias)."""

    name: str
    config: object  # a transformers config (a dict for ChatGLM2)
    max_context: int
    encoder: Encoder
    resolved: ResolvedModel | None = None
    tokenizer: object | None = None

    @property
    def chat_template_hash(self) -> str | None:
        """Part of the run's fingerprint: another template gives other prompts."""
        tpl = getattr(self.tokenizer, "chat_template", None)
        if getattr(self.encoder, "raw_prompt", False) or not tpl:
            return None
        return hashlib.sha256(str(tpl).encode()).hexdigest()[:16]


class EstimatedTokens:
    """An encoder for `uellm plan` without a tokenizer: placeholder ids of the estimated
    length (plan never generates from them)."""

    def encode(self, row: Row) -> list[int]:
        return [0] * max(1, len(row.text) // CHARS_PER_TOKEN)


@dataclass(slots=True)
class PreparedJob:
    """A read job whose valid rows are tokenised. `rejected`: rows the model cannot take."""

    job: Job
    model: ModelInputs
    rows: dict[int, PreparedRow]
    rejected: list[RowError]
    capped: int = 0  # rows whose max_new_tokens was capped to fit the context


def read(cfg: RunConfig, *, started_at: datetime | None = None) -> Job:
    """The job file, validated row by row (InputError for a file refused as a whole)."""
    from uellm_cli.jobs.readers import read_job

    return read_job(cfg.job, fmt=cfg.input_format, default_max_new_tokens=cfg.max_new_tokens,
                    default_slo_s=cfg.slo_s, run_started_at=started_at)


def model_for_run(cfg: RunConfig) -> ModelInputs:
    """Resolve --model to local files (a GGUF converts once), with its tokenizer and config."""
    from uellm_cli.engine.hf_engine import HFEngine
    from uellm_cli.engine.models import load_config, load_tokenizer, resolve_model
    from uellm_cli.profile.model import max_context_of

    resolved = resolve_model(cfg.model)
    tokenizer = load_tokenizer(resolved, trust_remote_code=cfg.trust_remote_code)
    config = load_config(resolved, trust_remote_code=cfg.trust_remote_code)
    return ModelInputs(resolved.name, config, max_context_of(config),
                       HFEngine(tokenizer, raw_prompt=cfg.raw_prompt), resolved, tokenizer)


def model_for_plan(cfg: RunConfig) -> ModelInputs:
    """--model without loading or converting anything: the config of an alias, a folder or a
    GGUF, and the tokenizer when the model's files are already here."""
    from uellm_cli.engine.hf_engine import HFEngine
    from uellm_cli.engine.models import find_local_model, load_tokenizer
    from uellm_cli.profile.model import max_context_of, resolve_config

    config, name, _ = resolve_config(cfg.model)
    resolved = find_local_model(cfg.model)
    tokenizer = None
    if resolved is not None:
        try:
            tokenizer = load_tokenizer(resolved, trust_remote_code=cfg.trust_remote_code)
        except Exception:  # noqa: BLE001 - a folder without a usable tokenizer: estimate
            tokenizer = None
    encoder = HFEngine(tokenizer, raw_prompt=cfg.raw_prompt) if tokenizer else EstimatedTokens()
    return ModelInputs(name, config, max_context_of(config), encoder, resolved, tokenizer)


def prepare(job: Job, model: ModelInputs) -> PreparedJob:
    """Tokenise every valid row; reject prompts that do not fit the context, cap the budget."""
    rows: dict[int, PreparedRow] = {}
    rejected: list[RowError] = []
    capped = 0
    max_context = model.max_context
    for row in job.rows:
        field = "messages" if row.messages else "prompt"
        try:
            ids = model.encoder.encode(row)
        except Exception as exc:  # noqa: BLE001 - a template or tokenizer failure is the row's
            rejected.append(RowError(str(job.path), row.line, row.id, field, "tokenize_failed",
                                     f"could not tokenise: {exc}"[:300], row.index, row.deadline_s))
            continue
        room = max_context - len(ids)
        if room < MIN_NEW_TOKENS:
            rejected.append(RowError(
                str(job.path), row.line, row.id, field, "prompt_too_long",
                f"prompt is {len(ids)} tokens; the model's context is {max_context}", row.index,
                row.deadline_s,
            ))
            continue
        if row.max_new_tokens > room:
            row.warnings.append(
                f"max_new_tokens capped from {row.max_new_tokens} to {room} to fit the "
                f"{max_context}-token context"
            )
            row.max_new_tokens = room
            capped += 1
        rows[row.index] = PreparedRow(row=row, prompt_ids=ids, predicted_tokens=row.max_new_tokens)
    return PreparedJob(job, model, rows, rejected, capped)
